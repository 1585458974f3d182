"""Inference fast paths (models/fast_paths.py): each one against the plain path, on tiny random models."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from sspir_core.demo.presets import TINY_CLIP_DIM, TINY_UNET, tiny_random_pipeline
from sspir_core.models.build import build_models
from sspir_core.models.fast_paths import FastPaths, PointwiseConvAsLinear, linear_projections
from sspir_core.restore.pipeline import RestoreOptions
from tests.conftest import wake_zero_convs


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    m = build_models(unet_config=TINY_UNET, clip_dim=TINY_CLIP_DIM).eval()
    wake_zero_convs(m.controlnet)
    return m


def predict(models, z, t, text, image, lq):
    cn = models.controlnet(z, t, text, controlnet_cond=lq, image_encoder_hidden_states=image, return_rgbs=False)
    return models.unet(
        z,
        t,
        text,
        image_encoder_hidden_states=image,
        down_block_additional_residuals=cn.down_residuals,
        mid_block_additional_residual=cn.mid_residual,
    ).sample


def test_fast_paths_switches() -> None:
    assert FastPaths() == FastPaths(context_kv=True, shared_cfg_prefix=True, linear_projections=False)
    assert FastPaths.none() == FastPaths(False, False, False)
    assert FastPaths().toggled("context_kv") == FastPaths(False, True, False)
    assert FastPaths().toggled("linear_projections") == FastPaths(True, True, True)
    with pytest.raises(ValueError, match="unknown fast path"):
        FastPaths().toggled("nope")


@pytest.mark.parametrize("per_sample_t", [False, True])
def test_shared_prefix_forward_equals_the_doubled_batch(models, per_sample_t) -> None:
    """A latent batch B with contexts of 2B runs the text-free prefix once: same as cat([z, z])."""
    g = torch.Generator().manual_seed(4)
    z = torch.randn(2, 4, 8, 8, generator=g)
    lq = torch.rand(2, 3, 64, 64, generator=g)
    text = torch.randn(4, 9, TINY_UNET["cross_attention_dim"], generator=g)  # [negative x2, positive x2]
    image = torch.randn(2, 256, 512, generator=g)
    image2 = torch.cat([image, image])
    t = torch.tensor([500, 20]) if per_sample_t else torch.tensor(500)
    t2 = torch.cat([t, t]) if per_sample_t else t
    with torch.no_grad():
        doubled = predict(models, torch.cat([z, z]), t2, text, image2, torch.cat([lq, lq]))
        shared = predict(models, z, t, text, image2, lq)
    assert shared.shape == doubled.shape == (4, 4, 8, 8)
    assert torch.allclose(shared, doubled, atol=1e-5, rtol=0)
    assert (doubled[:2] - doubled[2:]).abs().max() > 1e-3  # the two halves really differ (text matters)


def test_shared_prefix_refuses_a_batch_that_is_not_a_multiple(models) -> None:
    z = torch.randn(2, 4, 8, 8)
    text = torch.randn(3, 9, TINY_UNET["cross_attention_dim"])
    with torch.no_grad(), pytest.raises(ValueError, match="multiple of the sample batch"):
        models.unet(z, 10, text, image_encoder_hidden_states=torch.randn(3, 256, 512))


def test_linear_projections_switch_and_restore(models) -> None:
    before = {k: v.clone() for k, v in models.unet.state_dict().items()}
    convs = [m for m in models.unet.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    with torch.no_grad(), linear_projections(models.unet) as n:
        assert n > 0
        assert sum(isinstance(m, PointwiseConvAsLinear) for m in models.unet.modules()) == 2 * n
    after = models.unet.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
    assert not any(isinstance(m, PointwiseConvAsLinear) for m in models.unet.modules())
    assert [m for m in models.unet.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)] == convs
    with torch.enable_grad(), linear_projections(models.unet) as n:  # training is never switched
        assert n == 0


def test_linear_projections_same_numbers(models) -> None:
    g = torch.Generator().manual_seed(5)
    z, lq = torch.randn(2, 4, 8, 8, generator=g), torch.rand(2, 3, 64, 64, generator=g)
    text, image = (
        torch.randn(2, 9, TINY_UNET["cross_attention_dim"], generator=g),
        torch.randn(2, 256, 512, generator=g),
    )
    with torch.no_grad():
        plain = predict(models, z, 300, text, image, lq)
        with linear_projections(models.unet, models.controlnet):
            fast = predict(models, z, 300, text, image, lq)
    assert torch.allclose(fast, plain, atol=1e-5, rtol=0)


def test_pipeline_fast_paths_match_the_plain_path() -> None:
    """Each fast path and all together, through the tiled CFG sampler: within 1e-4 of the plain path."""
    pipe = tiny_random_pipeline(seed=0)
    wake_zero_convs(pipe.models.controlnet)
    g = torch.Generator().manual_seed(3)
    lq = torch.rand(1, 3, 96, 64, generator=g)
    opts = RestoreOptions(steps=3, cfg=7.5, tile=8, tile_overlap=4, vae_tile=None)
    text, neg = pipe.encode_text(["a cat"], "", 4)
    image = pipe.encode_image(lq)
    feats, _ = pipe.structure_prior(lq, return_rgbs=False)
    z = torch.randn(1, 4, 12, 8, generator=g)
    batches: list[int] = []
    hook = pipe.models.controlnet.conv_in.register_forward_hook(lambda m, i, o: batches.append(i[0].shape[0]))

    def run(paths: FastPaths) -> torch.Tensor:
        batches.clear()
        return pipe.denoise(z, text, neg, image, feats, opts, [torch.Generator().manual_seed(0)], paths=paths)

    try:
        plain = run(FastPaths.none())
        assert set(batches) == {2}  # the plain path doubles the latent for CFG
        every = FastPaths(True, True, True)
        for paths in (FastPaths(), every, *(every.toggled(n) for n in FastPaths.names())):
            out = run(paths)
            assert set(batches) == ({1} if paths.shared_cfg_prefix else {2}), paths
            assert torch.allclose(out, plain, atol=1e-4, rtol=0), (paths, (out - plain).abs().max())
    finally:
        hook.remove()


FAULTS_SCRIPT = textwrap.dedent("""
    import ctypes, resource, sys
    from sspir_core.restore.cpu_heap import keep_freed_memory
    applied = keep_freed_memory(sys.argv[1] == "keep")
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    size = 64 << 20
    faults = []
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        p = libc.malloc(size)
        ctypes.memset(p, 1, size)
        libc.free(p)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(applied, *faults)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_keep_freed_memory_stops_page_faults_on_reuse() -> None:
    """A freed 64 MB block comes back without faulting its 16k pages in again (in a child: process-wide)."""

    def faults(mode: str) -> list[int]:
        out = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT, mode], capture_output=True, text=True, check=True)
        applied, *counts = out.stdout.split()
        assert applied == "True"
        return [int(c) for c in counts]

    pages = (64 << 20) // 4096
    kept, default = faults("keep"), faults("default")
    assert all(c > pages // 2 for c in default)  # glibc's mmap: every reuse faults the pages in again
    assert kept[0] > pages // 2 and all(c < pages // 50 for c in kept[1:])
