"""``--compile`` falls back cleanly; FLOP counting matches hand counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sspir_core.bench.flops import count_flops
from sspir_core.restore.compile_models import compile_denoiser, uncompile_denoiser


class _Pipe:
    def __init__(self):
        torch.manual_seed(0)
        self.models = type("M", (), {})()
        self.models.controlnet = nn.Linear(4, 4)
        self.models.unet = nn.Linear(4, 4)


def _broken_backend(gm, example_inputs):
    raise RuntimeError("no C++ compiler here")


def test_compile_failure_falls_back_to_eager_with_one_message():
    pipe, messages = _Pipe(), []
    x = torch.randn(3, 4)
    with torch.no_grad():
        want = pipe.models.unet(x)
        assert compile_denoiser(pipe, log=messages.append, backend=_broken_backend) == ["ControlNet", "UNet"]
        got, again = pipe.models.unet(x), pipe.models.unet(x)
    assert torch.equal(got, want) and torch.equal(again, want)
    assert len(messages) == 1 and "UNet" in messages[0] and "no C++ compiler here" in messages[0]
    assert "eagerly" in messages[0]
    uncompile_denoiser(pipe)
    assert "forward" not in vars(pipe.models.unet)


def test_compiled_call_runs_and_matches():
    pipe, messages = _Pipe(), []
    x = torch.randn(3, 4)
    with torch.no_grad():
        want = pipe.models.controlnet(x)
        compile_denoiser(pipe, log=messages.append, backend="eager")  # dynamo tracing, no C++ toolchain needed
        got = pipe.models.controlnet(x)
    assert not messages and torch.allclose(got, want)
    assert not pipe.models.controlnet.forward.failed


def test_flop_counts_match_hand_counts():
    lin = nn.Linear(3, 4)
    assert count_flops(lambda: lin(torch.randn(5, 3))) == 2 * 5 * 3 * 4
    conv = nn.Conv2d(2, 6, 3, padding=1)
    assert count_flops(lambda: conv(torch.randn(1, 2, 7, 5))) == 2 * (7 * 5) * 6 * (2 * 9)
    q = torch.randn(2, 3, 16, 8)  # batch 2, 3 heads, 16 queries, head dim 8; 10 keys
    k, v = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 10, 8)
    # QK^T and PV: 2 matmuls of 2*16*10*8 multiply-adds per head
    n = count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
    assert n == 2 * 3 * 2 * (2 * 16 * 10 * 8)


@pytest.mark.slow  # torch.compile of the sampler
def test_compiled_sampler_has_no_graph_breaks_and_no_recompiles():
    """The fast paths under torch.compile: one graph per model, reused by the next restore, same numbers."""
    import torch._dynamo

    from sspir_core.demo.presets import tiny_random_pipeline
    from sspir_core.models.fast_paths import FastPaths
    from sspir_core.restore.pipeline import RestoreOptions
    from tests.conftest import wake_zero_convs

    pipe = tiny_random_pipeline(seed=0)
    wake_zero_convs(pipe.models.controlnet)
    g = torch.Generator().manual_seed(3)
    lq = torch.rand(1, 3, 64, 64, generator=g)
    opts = RestoreOptions(steps=2, cfg=7.5, tile=None, vae_tile=None)
    text, neg = pipe.encode_text(["a cat"], "", 4)
    image = pipe.encode_image(lq)
    feats, _ = pipe.structure_prior(lq, return_rgbs=False)
    z = torch.randn(1, 4, 8, 8, generator=g)

    def run(paths: FastPaths | None = None) -> torch.Tensor:
        return pipe.denoise(z, text, neg, image, feats, opts, [torch.Generator().manual_seed(0)], paths=paths)

    plain = run(FastPaths.none())
    graphs: list[int] = []

    def counting_backend(gm, example_inputs):
        graphs.append(len(gm.graph.nodes))
        return gm.forward

    torch._dynamo.reset()
    messages: list[str] = []
    try:
        compile_denoiser(pipe, log=messages.append, backend=counting_backend)
        first = run()
        n = len(graphs)
        second = run()
    finally:
        uncompile_denoiser(pipe)
        torch._dynamo.reset()
    assert not messages
    assert n == 2, f"{n} graphs: the compiled ControlNet and UNet should each be one graph"
    assert len(graphs) == n  # the second restore reused them
    assert torch.allclose(first, plain, atol=1e-4, rtol=0) and torch.equal(first, second)
