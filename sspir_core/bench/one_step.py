"""`sspir bench --parts one-step`: seconds per image of a one-step restore against the paper's 50-step one.

Both run on the same pipeline (same config, size, tiling and seed); the one-step run treats the weights as a
one-step checkpoint (timings do not depend on the weights; a one-step model's LoRA is folded into the UNet
weights at load, so it costs nothing at inference). One step without CFG is 1 ControlNet + UNet evaluation
per tile against 50 x 2 = 100 for the paper; the VAE, CLIP, Refine and Processor passes are the same in both,
so the whole-image ratio is below 100x.
"""

from __future__ import annotations

import statistics
from typing import Any

from ..devices import torch_dtype
from ..models.one_step import ONE_STEP
from ..restore.pipeline import RestoreOptions, RestorePipeline
from .sampler import random_lq, time_call
from .settings import CAPTION, EXTRA_PARTS, BenchSettings, build_bench_pipeline


def bench_one_step(settings: BenchSettings, pipe: RestorePipeline | None = None) -> dict[str, Any]:
    """{one_step_s, multi_step_s, ratio, ...} for a (size/4 px input) x4 restore."""
    from ..restore.pipeline import restore_image

    if pipe is None:
        pipe = build_bench_pipeline(settings.config, settings.device, torch_dtype(settings.dtype), settings.seed)
    tiling = dict(
        tile=settings.tile or None, tile_overlap=settings.tile_overlap, vae_tile=settings.vae_tile, seed=settings.seed
    )
    multi = RestoreOptions(steps=settings.image_steps, cfg=settings.cfg, **tiling)
    one = RestoreOptions(steps=1, cfg=1.0, **tiling)
    lq = random_lq(settings.size // 4, pipe.device, settings.seed)
    mode = pipe.models.mode
    try:
        pipe.models.mode = ONE_STEP
        one_s = statistics.median(
            time_call(lambda: restore_image(pipe, lq, CAPTION, one, upscale=4), settings.repeats, pipe.device, warmup=1)
        )
        pipe.models.mode = "multi-step"
        multi_s = time_call(lambda: restore_image(pipe, lq, CAPTION, multi, upscale=4), 1, pipe.device, warmup=0)[0]
    finally:
        pipe.models.mode = mode
    evals = settings.image_steps * (2 if settings.cfg != 1.0 else 1)
    return {
        "size_px": settings.size,
        "steps": settings.image_steps,
        "cfg": settings.cfg,
        "one_step_s": one_s,
        "multi_step_s": multi_s,
        "ratio": multi_s / one_s,
        "denoiser_evals": [1, evals],
    }


def one_step_lines(r: dict[str, Any]) -> list[str]:
    return [
        f"one-step vs {r['steps']}-step restore ({r['size_px']} px output, same config, s/image)",
        f"   one-step (t=999, no CFG): {r['one_step_s']:8.3f} s   ({r['denoiser_evals'][0]} denoiser evaluation)",
        f"   {r['steps']}-step (CFG {r['cfg']:g}):      {r['multi_step_s']:8.3f} s   "
        f"({r['denoiser_evals'][1]} denoiser evaluations)",
        f"   ratio {r['ratio']:.1f}x (VAE, CLIP and Processor run once in both)",
    ]


EXTRA_PARTS["one-step"] = (bench_one_step, one_step_lines)
