"""Model properties beyond the one parity config: batches, odd sizes, scales, gradients, full-size manifests."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode

from sspir_core import build_models
from sspir_core.training.losses import sspir_losses
from sspir_core.weights.checkpoint import load_official_checkpoint

# SD2.1-like in miniature: linear projections, per-level head counts, two layers per block.
TINY_SD21_LIKE = {
    "block_out_channels": [16, 32, 32],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "attention_head_dim": [2, 4, 4],
    "use_linear_projection": True,
    "layers_per_block": 2,
    "cross_attention_dim": 24,
    "norm_num_groups": 8,
    "sample_size": 8,
}


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Fill every parameter (zero convs too) so that each path moves the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    models = build_models(unet_config=TINY_SD21_LIKE, clip_dim=40).eval()
    for i, (_, m) in enumerate(models.named_modules_()):
        _randomize(m, 100 + i)
    return models


def _run(models, lq, latent, t, text, tokens, scale=1.0):
    image = models.refine(tokens)
    rgbs, downs, mid = models.controlnet(
        latent, t, text, controlnet_cond=lq, conditioning_scale=scale, image_encoder_hidden_states=image
    )
    eps = models.unet(
        latent,
        t,
        text,
        image_encoder_hidden_states=image,
        down_block_additional_residuals=downs,
        mid_block_additional_residual=mid,
    ).sample
    return rgbs, downs, mid, eps


def _inputs(b, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.rand(b, 3, 8 * h, 8 * w, generator=g),
        torch.randn(b, 4, h, w, generator=g),
        torch.randn(b, 77, 24, generator=g),
        torch.randn(b, 16, 40, generator=g),
    )


@torch.no_grad()
def test_batch_with_per_sample_timesteps_equals_single_runs(tiny):
    lq, latent, text, tokens = _inputs(2, 8, 12)
    t = torch.tensor([10, 900])
    _, _, _, eps = _run(tiny, lq, latent, t, text, tokens)
    for i in range(2):
        _, _, _, single = _run(tiny, lq[i : i + 1], latent[i : i + 1], t[i : i + 1], text[i : i + 1], tokens[i : i + 1])
        assert torch.allclose(eps[i : i + 1], single, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(eps[0], eps[1])


@torch.no_grad()
def test_odd_non_square_latent_keeps_its_size(tiny):
    lq, latent, text, tokens = _inputs(1, 9, 13)
    rgbs, downs, _, eps = _run(tiny, lq, latent, torch.tensor([500]), text, tokens)
    assert eps.shape == latent.shape
    assert [tuple(r.shape[-2:]) for r in rgbs] == [(36, 52), (18, 26), (9, 13)]
    assert downs[0].shape[-2:] == (9, 13)


@torch.no_grad()
def test_conditioning_scale_scales_every_residual(tiny):
    lq, latent, text, tokens = _inputs(1, 8, 8)
    _, downs1, mid1, _ = _run(tiny, lq, latent, torch.tensor([300]), text, tokens, 1.0)
    _, downs2, mid2, _ = _run(tiny, lq, latent, torch.tensor([300]), text, tokens, 0.4)
    for a, b in zip(downs1, downs2):
        assert torch.allclose(b, 0.4 * a, atol=1e-6)
    assert torch.allclose(mid2, 0.4 * mid1, atol=1e-6)


@torch.no_grad()
def test_pixel_context_defaults_to_the_residuals(tiny):
    lq, latent, text, tokens = _inputs(1, 8, 8)
    image = tiny.refine(tokens)
    _, downs, mid = tiny.controlnet(latent, 5, text, controlnet_cond=lq, image_encoder_hidden_states=image)
    kw = dict(
        image_encoder_hidden_states=image, down_block_additional_residuals=downs, mid_block_additional_residual=mid
    )
    a = tiny.unet(latent, 5, text, **kw).sample
    b = tiny.unet(latent, 5, text, pixel_attention_context=downs, **kw).sample
    c = tiny.unet(latent, 5, text, pixel_attention_context=[torch.zeros_like(d) for d in downs], **kw).sample
    assert torch.equal(a, b)
    assert not torch.allclose(a, c, atol=1e-3)


@torch.no_grad()
def test_precomputed_processor_features_give_the_same_residuals(tiny):
    lq, latent, text, tokens = _inputs(1, 8, 8)
    image = tiny.refine(tokens)
    direct = tiny.controlnet(latent, 7, text, controlnet_cond=lq, image_encoder_hidden_states=image)
    feats, _ = tiny.controlnet.encode_condition(lq)
    cached = tiny.controlnet(latent, 7, text, processor_features=feats, image_encoder_hidden_states=image)
    assert all(torch.equal(a, b) for a, b in zip(direct.down_residuals, cached.down_residuals))


def test_gradients_reach_exactly_the_trainable_parameters(fixture_a):
    models = load_official_checkpoint(fixture_a / "checkpoint-7")
    trainable = {id(p) for p in models.set_trainable()}
    x = load_file(str(fixture_a / "inputs.safetensors"))
    image = models.refine(x["clip_patch_tokens"])
    rgbs, downs, mid = models.controlnet(
        x["noisy_latent"], x["timestep"], x["text_emb"], controlnet_cond=x["lq"], image_encoder_hidden_states=image
    )
    eps = models.unet(
        x["noisy_latent"],
        x["timestep"],
        x["text_emb"],
        image_encoder_hidden_states=image,
        down_block_additional_residuals=downs,
        mid_block_additional_residual=mid,
    ).sample
    sspir_losses(eps, x["noise"], rgbs, x["gt"]).total.backward()

    # Independent count: the official file names the new UNet modules image_attentions / pixel_attentions.
    unet_keys = load_file(str(fixture_a / "checkpoint-7/unet/diffusion_pytorch_model.safetensors"))
    n_new_unet = sum(1 for k in unet_keys if "image_attentions" in k or "pixel_attentions" in k)
    n_cn = len(load_file(str(fixture_a / "checkpoint-7/controlnet/diffusion_pytorch_model.safetensors")))
    assert len(trainable) == n_new_unet + n_cn + 10

    for name, module in models.named_modules_():
        for pname, p in module.named_parameters():
            if id(p) in trainable:
                assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}.{pname} got no gradient"
            else:
                assert not p.requires_grad and p.grad is None, f"frozen {name}.{pname} got a gradient"


@pytest.mark.parametrize("base", ["sd15", "sd21"])
def test_full_size_models_match_official_manifest(base, manifests):
    manifest = json.loads((manifests / f"sspir-{base}-keys.json").read_text())
    models = build_models(base, device="meta")
    for name, module in models.named_modules_():
        ours = {k: list(v.shape) for k, v in module.state_dict().items()}
        assert ours == manifest[name], f"{base} {name}: keys/shapes differ from the official model"
    assert all(p.is_meta for _, m in models.named_modules_() for p in m.parameters())


@pytest.mark.parametrize("base", ["sd15", "sd21"])
def test_written_configs_match_official(base, manifests):
    from sspir_core.weights.checkpoint import official_controlnet_config, official_unet_config

    models = build_models(base, device="meta")
    for what, ours in (("unet", official_unet_config(models)), ("controlnet", official_controlnet_config(models))):
        ref = json.loads((manifests / f"sspir-{base}-{what}-config.json").read_text())
        shared = [k for k in ref if not k.startswith("_") and k in ours]
        assert len(shared) >= 25
        diff = {k: (ours[k], ref[k]) for k in shared if json.loads(json.dumps(ours[k])) != ref[k]}
        assert not diff, f"{base} {what} config differs: {diff}"


@torch.no_grad()
def test_tiled_processor_equals_whole_image(tiny):
    lq = torch.rand(2, 3, 96, 136, generator=torch.Generator().manual_seed(4))
    whole, rgbs = tiny.controlnet.encode_condition(lq)
    tiled, rgbs_t = tiny.controlnet.encode_condition(lq, tile=32)
    assert torch.allclose(tiled, whole, atol=1e-5) and whole.abs().max() > 0.01
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(rgbs, rgbs_t))
    # Too small a halo is NOT exact: the check can fail.
    narrow, _ = tiny.controlnet.controlnet_cond_embedding.forward_tiled(lq, 32, halo=8)
    assert not torch.allclose(narrow, whole, atol=1e-5)


class _LargestCopy(TorchDispatchMode):
    """Records the largest tensor made by a dtype/device copy (``aten._to_copy``) while active."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten._to_copy.default:
            self.largest = max(self.largest, out.numel())
        return out


@torch.no_grad()
def test_tiled_priors_cast_per_tile_with_the_numbers_of_a_whole_cast():
    """The Processor and the VAE encode of a half-precision pipeline cast each tile, not the whole LQ."""
    from sspir_core.demo.presets import tiny_random_pipeline

    pipe = tiny_random_pipeline(seed=0, dtype=torch.bfloat16)
    lq = torch.rand(1, 3, 128, 192, generator=torch.Generator().manual_seed(5))
    with _LargestCopy() as copies:
        feats, rgbs = pipe.structure_prior(lq, tile=32)
    assert copies.largest < lq.numel() // 2
    ref, ref_rgbs = pipe.models.controlnet.encode_condition(lq.to(torch.bfloat16), tile=32)
    assert feats.dtype == torch.bfloat16 and torch.equal(feats, ref)
    assert all(torch.equal(a, b) for a, b in zip(rgbs, ref_rgbs))

    def latents(x: torch.Tensor) -> torch.Tensor:
        return pipe.vae_encode(x, [torch.Generator().manual_seed(1)], vae_tile=64)

    with _LargestCopy() as copies:
        ours = latents(lq)
    assert copies.largest < lq.numel() // 2
    assert torch.equal(ours, latents(lq.to(torch.bfloat16)))  # a whole cast first: the same numbers
