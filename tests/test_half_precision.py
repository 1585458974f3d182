"""fp16/bf16 safety: large ControlNet residuals (20+ and far beyond) through attention and the skip additions.

Tiny random models with the ControlNet's output convs scaled so its residuals reach a chosen size, and the
pixel attentions' query/key weights scaled up (large logits), run in fp32 and in half precision on the CPU.
"""

from __future__ import annotations

import copy

import pytest
import torch

from sspir_core.build import build_models
from sspir_core.presets import TINY_CLIP_DIM, TINY_UNET


def _inputs(dtype):
    g = torch.Generator().manual_seed(2)
    x = {"z": torch.randn(2, 4, 8, 8, generator=g), "text": 3 * torch.randn(2, 9, 32, generator=g),
         "image": 3 * torch.randn(2, 256, 512, generator=g), "lq": torch.rand(2, 3, 64, 64, generator=g)}
    return {k: v.to(dtype) for k, v in x.items()}


def _run(models, dtype):
    x = _inputs(dtype)
    with torch.no_grad():
        _, downs, mid = models.controlnet(x["z"], 500, x["text"], controlnet_cond=x["lq"],
                                          image_encoder_hidden_states=x["image"])
        out = models.unet(x["z"], 500, x["text"], image_encoder_hidden_states=x["image"],
                          down_block_additional_residuals=downs, mid_block_additional_residual=mid).sample
    peak = max(float(mid.abs().max()), *(float(d.abs().max()) for d in downs))
    return out.float(), peak


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    models = build_models(unet_config=TINY_UNET, clip_dim=TINY_CLIP_DIM).eval()
    models.set_trainable()
    for _, m in models.named_modules_():
        m.requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    for name, p in models.controlnet.named_parameters():
        if "controlnet_" in name or "conv_out" in name:
            p.copy_(0.05 * torch.randn(p.shape, generator=g))
    for name, p in models.unet.named_parameters():
        if ".pixel_attentions." in name and (".to_q." in name or ".to_k." in name):
            p.mul_(8)  # large weights: large attention logits on the large residual context
    return models


def _with_residuals(base, size):
    models = copy.deepcopy(base)
    _, peak = _run(models, torch.float32)
    for name, p in models.controlnet.named_parameters():
        if name.startswith(("controlnet_down_blocks", "controlnet_mid_block")):
            p.mul_(size / peak)
    return models


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_follows_fp32_with_residuals_of_40(base, dtype):
    models = _with_residuals(base, 40.0)
    ref, peak = _run(models, torch.float32)
    assert peak == pytest.approx(40.0, rel=1e-3)
    half, half_peak = _run(copy.deepcopy(models).to(dtype=dtype), dtype)
    assert torch.isfinite(half).all() and half_peak == pytest.approx(40.0, rel=0.02)
    # Error in units of the format's own rounding (eps): an overflow or a lost residual would be orders of
    # magnitude off; ordinary rounding through ~40 layers loses a few bits (measured: fp16 max 10 eps,
    # mean 7 eps; bf16 max 19 eps, mean 13 eps). Budget: 32 eps (5 bits) for both formats.
    eps = torch.finfo(dtype).eps
    assert (half - ref).abs().max() <= 32 * eps * ref.abs().max()
    assert (half - ref).abs().mean() <= 32 * eps * ref.abs().mean()


def test_fp16_does_not_overflow_with_huge_residuals(base):
    """Residuals of 4000 (200x the usual): still finite, with no inf/NaN from attention or the additions."""
    models = _with_residuals(base, 4000.0)
    ref, _ = _run(models, torch.float32)
    half, peak = _run(copy.deepcopy(models).to(dtype=torch.float16), torch.float16)
    assert peak > 3900 and torch.isfinite(half).all()
    assert (half - ref).abs().max() <= ref.abs().max()  # same scale: nothing blew up
