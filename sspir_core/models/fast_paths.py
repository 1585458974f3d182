"""Inference-only rewrites of the denoiser that give the plain path's numbers (within fp rounding) faster.

Each one is a switch in :class:`FastPaths`, so ``sspir bench`` can time the sampler with the defaults, with
none (the plain path, which computes what the official code computes, the way it computes it) and with
each one switched (``--ablate``):

- ``context_kv``: text and image cross-attentions project their constant contexts to keys/values once
  per restore (:mod:`.kv_cache`).
- ``linear_projections`` (off by default): SD1.x transformer stages project in and out with 1x1
  convolutions on NCHW maps; the same weights applied as a matrix product on the token layout. Alone a
  320-channel projection runs ~2x faster that way on a CPU, but the whole step showed no gain within
  the noise of our 2-core machine, so it stays a switch until a bench shows it pays (e.g. on a GPU).
- ``shared_cfg_prefix``: with CFG on the text only, both halves of the batch are equal up to the first
  text attention (conv_in, first resnet, first image attention of the ControlNet and of the UNet), so
  that prefix runs once and is repeated (see :func:`.blocks.run_down_blocks`).

None of them is used with autograd on or touches the weights: training and saved checkpoints are the
plain path's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from diffusers import Transformer2DModel
from torch import nn

from .kv_cache import context_kv_cache


@dataclass(frozen=True)
class FastPaths:
    """Which inference rewrites the sampler uses (all on by default; :meth:`none` is the plain path)."""

    context_kv: bool = True
    shared_cfg_prefix: bool = True
    linear_projections: bool = False  # off: no gain measurable on the CPU (see docs/performance.md)

    @classmethod
    def none(cls) -> FastPaths:
        return cls(**{f.name: False for f in fields(cls)})

    def toggled(self, name: str) -> FastPaths:
        """These paths with ``name`` switched (the bench's one-at-a-time timings)."""
        if name not in self.names():
            raise ValueError(f"unknown fast path {name!r}; choose one of {', '.join(self.names())}")
        return replace(self, **{name: not getattr(self, name)})

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


class PointwiseConvAsLinear(nn.Module):
    """A 1x1 ``Conv2d`` applied to tokens ``[B, N, C]`` as ``F.linear`` with the same (viewed) weight."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.groups != 1 or conv.padding not in ((0, 0), 0):
            raise ValueError(f"not a plain pointwise convolution: {conv}")
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.conv.weight
        return F.linear(x, w.view(w.shape[0], w.shape[1]), self.conv.bias)


def _conv_projection_stages(*models: nn.Module) -> list[Transformer2DModel]:
    found = []
    for model in models:
        for module in model.modules():
            if (
                isinstance(module, Transformer2DModel)
                and getattr(module, "is_input_continuous", False)
                and not module.use_linear_projection
                and isinstance(module.proj_in, nn.Conv2d)
                and isinstance(module.proj_out, nn.Conv2d)
            ):
                found.append(module)
    return found


def _wrappers(stage: Transformer2DModel) -> tuple[PointwiseConvAsLinear, PointwiseConvAsLinear]:
    """The stage's two wrappers, made once and kept outside its modules (no state-dict entry): a compiled
    graph guards on the module objects it saw, so switching in the same wrappers at every restore reuses
    it instead of recompiling."""
    pair = stage.__dict__.get("_sspir_linear_projections")
    if pair is None or pair[0].conv is not stage.proj_in or pair[1].conv is not stage.proj_out:
        pair = (PointwiseConvAsLinear(stage.proj_in), PointwiseConvAsLinear(stage.proj_out))
        stage.__dict__["_sspir_linear_projections"] = pair
    return pair


@contextlib.contextmanager
def linear_projections(*models: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Within the block, transformer stages with 1x1-conv projections project on the token layout.

    Yields how many stages were switched; leaving the block puts the convolutions back (state-dict keys
    and the modules' flags are as before).
    """
    switched: list[Transformer2DModel] = []
    if enabled and not torch.is_grad_enabled():
        for stage in _conv_projection_stages(*models):
            stage.proj_in, stage.proj_out = _wrappers(stage)
            stage.use_linear_projection = True
            switched.append(stage)
    try:
        yield len(switched)
    finally:
        for stage in switched:
            stage.proj_in = stage.proj_in.conv
            stage.proj_out = stage.proj_out.conv
            stage.use_linear_projection = False


@contextlib.contextmanager
def fast_paths(*models: nn.Module, paths: FastPaths) -> Iterator[None]:
    """The module-level rewrites of ``paths`` (K/V cache, linear projections) for ``models`` inside the block.

    ``shared_cfg_prefix`` is a calling convention, not a module change: the caller passes the latent once
    (see :meth:`sspir_core.restore.pipeline.RestorePipeline.denoise`).
    """
    with (
        context_kv_cache(*models, enabled=paths.context_kv),
        linear_projections(*models, enabled=paths.linear_projections),
    ):
        yield
