"""Cached context K/V (models/kv_cache.py) against the plain attention path, on tiny random models."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from sspir_core.demo.presets import TINY_CLIP_DIM, TINY_UNET
from sspir_core.models.build import build_models
from sspir_core.models.fast_paths import FastPaths
from sspir_core.models.kv_cache import CachedKVProcessor, constant_context_attentions, context_kv_cache
from tests.conftest import wake_zero_convs


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    m = build_models(unet_config=TINY_UNET, clip_dim=TINY_CLIP_DIM).eval()
    wake_zero_convs(m.controlnet)  # so every path counts
    return m


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(2)
    return {
        "z": torch.randn(2, 4, 8, 8, generator=g),
        "text": torch.randn(2, 9, TINY_UNET["cross_attention_dim"], generator=g),
        "image": torch.randn(2, 256, 512, generator=g),
        "lq": torch.rand(2, 3, 64, 64, generator=g),
    }


def step(models, x, t=500):
    """One ControlNet + UNet prediction as the sampler runs it."""
    _, downs, mid = models.controlnet(
        x["z"], t, x["text"], controlnet_cond=x["lq"], image_encoder_hidden_states=x["image"]
    )
    return models.unet(
        x["z"],
        t,
        x["text"],
        image_encoder_hidden_states=x["image"],
        down_block_additional_residuals=downs,
        mid_block_additional_residual=mid,
    ).sample


def test_only_text_and_image_cross_attentions_are_switched(models):
    attns = constant_context_attentions(models.unet, models.controlnet)
    names = {n for m in (models.unet, models.controlnet) for n, a in m.named_modules() if any(a is b for b in attns)}
    assert names and all(n.endswith("attn2") for n in names)
    assert not any("pixel_attentions" in n for n in names)  # their context changes every step
    assert any("image_attentions" in n for n in names) and any(".attentions." in n for n in names)


def test_cached_path_equals_plain_path_and_reuses(models, inputs):
    with torch.no_grad():
        plain = step(models, inputs)
        with context_kv_cache(models.unet, models.controlnet) as procs:
            first = step(models, inputs)
            second = step(models, inputs, t=20)
            third = step(models, inputs, t=20)
        plain_20 = step(models, inputs, t=20)
    n = len(constant_context_attentions(models.unet, models.controlnet))
    assert len(procs) == n
    assert sum(p.misses for p in procs) == n  # one projection per attention for the whole block
    assert sum(p.hits for p in procs) == 2 * n
    # same operations on the same numbers: identical to the plain path, far inside the 1e-4 budget
    assert torch.allclose(first, plain, atol=1e-6, rtol=0) and torch.allclose(second, plain_20, atol=1e-6, rtol=0)
    assert torch.equal(second, third)
    assert not torch.allclose(first, second)  # the timestep mattered: not a stale cached output


def test_processors_restored_and_cache_dropped(models, inputs):
    before = [a.processor for a in constant_context_attentions(models.unet, models.controlnet)]
    with torch.no_grad(), context_kv_cache(models.unet) as procs:
        step(models, inputs)
        assert all(isinstance(a.processor, CachedKVProcessor) for a in constant_context_attentions(models.unet))
    after = [a.processor for a in constant_context_attentions(models.unet, models.controlnet)]
    assert all(a is b for a, b in zip(before, after)) and all(type(p) is AttnProcessor2_0 for p in after)
    assert all(p._kv is None and p._context is None for p in procs)


def test_new_or_changed_context_is_recomputed(models, inputs):
    other = {**inputs, "text": inputs["text"].clone()}
    with torch.no_grad():
        with context_kv_cache(models.unet, models.controlnet):
            step(models, other)
            other["text"].mul_(-1.5)  # in place: same object, new version
            changed = step(models, other)
            fresh = step(models, {**other, "text": other["text"].clone()})  # new object, same values
        plain = step(models, other)
    assert torch.allclose(changed, plain, atol=1e-6, rtol=0) and torch.allclose(fresh, plain, atol=1e-6, rtol=0)


def test_training_gradients_are_untouched(models, inputs):
    """With autograd on, the cache steps aside: the same loss and gradients as the plain path."""
    params = models.unet.sspir_parameters()[:4] + list(models.controlnet.parameters())[:4]

    def loss_and_grads():
        for p in params:
            p.requires_grad_(True)
            p.grad = None
        loss = step(models, inputs).square().mean()
        loss.backward()
        grads = [p.grad.clone() for p in params]
        for p in params:
            p.requires_grad_(False)
            p.grad = None
        return loss.detach(), grads

    plain_loss, plain_grads = loss_and_grads()
    with context_kv_cache(models.unet, models.controlnet) as procs:
        loss, grads = loss_and_grads()
    assert sum(p.hits + p.misses for p in procs) == 0
    assert torch.equal(loss, plain_loss) and all(torch.equal(a, b) for a, b in zip(grads, plain_grads))


def test_pipeline_denoise_same_with_and_without_cache():
    from sspir_core.demo.presets import tiny_random_pipeline
    from sspir_core.restore.pipeline import RestoreOptions

    pipe = tiny_random_pipeline(seed=0)
    g = torch.Generator().manual_seed(3)
    lq = torch.rand(1, 3, 96, 64, generator=g)
    opts = RestoreOptions(steps=2, tile=8, tile_overlap=4, vae_tile=None)  # 12 x 8 latent: tiled, 2 x 1 tiles
    text, neg = pipe.encode_text(["a cat"], "", 4)
    image = pipe.encode_image(lq)
    feats, _ = pipe.structure_prior(lq, return_rgbs=False)
    z = torch.randn(1, 4, 12, 8, generator=g)

    def run(cache: bool) -> torch.Tensor:
        gens = [torch.Generator().manual_seed(0)]
        paths = FastPaths(context_kv=cache, linear_projections=False, shared_cfg_prefix=False)
        return pipe.denoise(z, text, neg, image, feats, opts, gens, paths=paths)

    assert torch.allclose(run(True), run(False), atol=1e-5, rtol=0)


def test_inference_mode_contexts_are_cached_too(models, inputs):
    """ComfyUI runs nodes under torch.inference_mode(): its tensors track no version counter."""
    with torch.inference_mode():
        plain = step(models, inputs)
        with context_kv_cache(models.unet, models.controlnet) as procs:
            first = step(models, inputs)
            second = step(models, inputs)
    n = len(constant_context_attentions(models.unet, models.controlnet))
    assert sum(p.misses for p in procs) == n and sum(p.hits for p in procs) == n
    assert torch.allclose(first, plain, atol=1e-6, rtol=0) and torch.equal(first, second)


def test_pipeline_restore_under_inference_mode_matches_no_grad():
    from sspir_core.demo.presets import tiny_random_pipeline
    from sspir_core.restore.pipeline import RestoreOptions

    pipe = tiny_random_pipeline(seed=0)
    lq = torch.rand(1, 3, 32, 40, generator=torch.Generator().manual_seed(1))
    opts = RestoreOptions(steps=2, vae_tile=None)
    with torch.no_grad():
        ref = pipe.restore(lq, "a cat", opts)
    with torch.inference_mode():
        out = pipe.restore(lq, "a cat", opts)
    assert torch.allclose(out, ref, atol=1e-6, rtol=0)


def test_a_fresh_slice_of_the_same_context_hits_and_other_slices_miss(models, inputs):
    """The shared CFG prefix hands its first image attention ``image[:B]``, a new view at every step."""
    image = torch.cat([inputs["image"], inputs["image"]])
    z, text = inputs["z"], torch.cat([inputs["text"], inputs["text"]])
    with torch.no_grad(), context_kv_cache(models.unet) as procs:
        for t in (500, 20, 5):
            models.unet(z, t, text, image_encoder_hidden_states=image)
        misses = sum(p.misses for p in procs)
        other = image.clone()  # equal values, other storage: must be projected again
        models.unet(z, 5, text, image_encoder_hidden_states=other)
    n = len(constant_context_attentions(models.unet))
    assert misses == n  # one projection per attention over three steps, the sliced one included
    assert sum(p.misses for p in procs) - misses == sum(
        1 for n_, _ in models.unet.named_modules() if n_.endswith("attn2") and "image_attentions" in n_
    )
