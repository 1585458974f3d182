"""`sspir bench --parts train`: the training-step figure runs on the CPU and counts what SSP-IR trains."""

from __future__ import annotations

import pytest
import torch

from sspir_core.bench.training import bench_train_step, format_train_report
from sspir_core.demo.presets import TINY_CLIP_DIM, TINY_UNET
from sspir_core.models.build import build_models

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow  # times training steps
def test_train_step_bench_on_cpu():
    r = bench_train_step("tiny", "cpu", "fp32", size=64, batch=1, repeats=1)
    expected = sum(
        p.numel() for p in build_models(unet_config=TINY_UNET, clip_dim=TINY_CLIP_DIM).trainable_parameters()
    )
    assert r["trainable_params"] == expected
    assert r["step_s"] > 0 and "peak_gib" not in r  # CUDA-only figures are absent, not faked
    assert "ms/step" in format_train_report(r)


def test_train_step_updates_the_trainable_weights_only():
    from sspir_core.bench.training import _setup
    from sspir_core.models.unet import is_prior_attention_key
    from sspir_core.training.step import training_losses

    pipe, module, optimizer, params, scheduler = _setup("tiny", torch.device("cpu"), False, 0)
    vae_before = {k: v.clone() for k, v in pipe.vae.state_dict().items()}
    sd_before = {k: v.clone() for k, v in pipe.models.unet.state_dict().items() if not is_prior_attention_key(k)}
    g = torch.Generator().manual_seed(0)
    losses = training_losses(pipe, module, scheduler, torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64), [""], g)
    losses.total.backward()
    with_grad = {n for n, p in module.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    for part in (
        "controlnet.controlnet_down_blocks.",
        "controlnet.controlnet_cond_embedding.to_rgbs.",
        "unet.down_blocks.0.image_attentions.",
        "unet.up_blocks.0.pixel_attentions.",
        "refine.",
    ):
        assert any(n.startswith(part) for n in with_grad), part
    assert not any(p.requires_grad for p in pipe.vae.parameters())
    optimizer.step()
    assert all(torch.equal(v, pipe.vae.state_dict()[k]) for k, v in vae_before.items())
    unet_after = pipe.models.unet.state_dict()
    assert all(torch.equal(v, unet_after[k]) for k, v in sd_before.items())  # the SD UNet stays frozen
