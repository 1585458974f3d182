"""Sampler figures: ms per denoising step (ours, the plain path, stock diffusers), the per-image priors'
share of a run, and one whole restore.

Functions are timed alternately (:func:`time_interleaved`) so background load hits all of them alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..models.fast_paths import FastPaths
from ..restore.cpu_heap import heap_bytes, keep_freed_memory, prefault_heap
from ..restore.pipeline import RestoreOptions, RestorePipeline
from .settings import CAPTION, BenchSettings, build_stock_pair

HEAP = "kept_heap"  # the ablation entry for cpu_memory.keep_freed_memory (CPU only)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], repeats: int, device: torch.device, warmup: int = 1) -> list[float]:
    """Seconds per call, ``repeats`` times after ``warmup`` untimed calls (first calls pay one-time set-up)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    out = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t0)
    return out


def time_interleaved(
    fns: Sequence[Callable[[], Any]], repeats: int, device: torch.device, warmup: int = 1
) -> list[list[float]]:
    """Like :func:`time_call` for several functions, alternating them so background load hits all alike.

    Each round starts one function later than the previous one, so no function always runs right after
    the same neighbour (a run can leave caches, the heap or the clock in a state that favours the next).
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    out: list[list[float]] = [[] for _ in fns]
    n = len(fns)
    for r in range(max(1, repeats)):
        for i in (*range(r % n, n), *range(r % n)):
            fn, times = fns[i], out[i]
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t0)
    return out


def random_lq(size: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """A [1,3,size,size] LQ already at the output size (content does not change the timings)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, size, size, generator=g).to(device)


def _priors(pipe: RestorePipeline, lq: torch.Tensor, options: RestoreOptions) -> dict[str, Any]:
    generators = [torch.Generator(device=pipe.device).manual_seed(options.seed)]
    text, negative = pipe.encode_text([CAPTION], options.negative_prompt, options.max_chunks)
    return {
        "text": text,
        "negative": negative,
        "image_emb": pipe.encode_image(lq),
        "features": pipe.structure_prior(lq)[0],
        "latents": pipe.vae_encode(lq, generators, options.vae_tile),
    }


def bench_step(pipe: RestorePipeline, settings: BenchSettings) -> dict[str, Any]:
    """Median ms per CFG step: ``RestorePipeline.denoise`` itself vs the same loop on stock diffusers models."""
    from ..restore.schedulers import make_scheduler

    options = RestoreOptions(steps=settings.step_steps, cfg=settings.cfg, tile=None, vae_tile=None, seed=settings.seed)
    lq = random_lq(settings.size, pipe.device, settings.seed)
    p = _priors(pipe, lq, options)
    generators = [torch.Generator(device=pipe.device).manual_seed(settings.seed)]
    latents = p["latents"].float()

    # On a CPU the heap setting of `sspir` (cpu_memory) is part of what is timed: ours and stock run with
    # it, the plain path with glibc's default use of mmap (its best case), switched before each call.
    # A kept-heap run that follows a default one first regrows the heap untimed (its size after the warm-up),
    # so each is timed in the steady state a 50-step restore is in after its first step.
    heap = pipe.device.type == "cpu" and keep_freed_memory(True)
    state = {"kept": True, "size": 0}

    def set_heap(keep: bool) -> None:
        if not heap:
            return
        keep_freed_memory(keep)
        if keep and not state["kept"]:
            prefault_heap(state["size"] - (heap_bytes() or state["size"]))  # only what the default run gave back
        state["kept"] = keep

    def sampler(paths: FastPaths, keep_heap: bool = True) -> Callable[[], None]:
        def run() -> None:
            set_heap(keep_heap)
            pipe.denoise(
                latents, p["text"], p["negative"], p["image_emb"], p["features"], options, generators, paths=paths
            )
            if keep_heap and not state["size"]:  # the heap one kept-heap run leaves (fixed: never chases growth)
                state["size"] = heap_bytes() or 0

        return run

    ours, ours_plain = sampler(FastPaths()), sampler(FastPaths.none(), keep_heap=False)
    left_out: list[str] = (
        FastPaths.names() + ([HEAP] if heap else []) if settings.ablate and not settings.compile else []
    )
    without = [
        sampler(FastPaths(), keep_heap=False) if n == HEAP else sampler(FastPaths().toggled(n)) for n in left_out
    ]

    unet, controlnet = build_stock_pair(pipe)
    text_in = torch.cat([p["negative"], p["text"]])
    image_in = torch.cat([lq, lq]).to(pipe.dtype)  # stock ControlNet: the image, embedded at every step

    @torch.no_grad()
    def baseline() -> None:
        set_heap(True)
        scheduler = make_scheduler(options.scheduler, pipe.scheduler_config)
        scheduler.set_timesteps(options.steps, device=pipe.device)
        z = latents
        for t in scheduler.timesteps:
            z_in = scheduler.scale_model_input(z, t).to(pipe.dtype)
            z2 = torch.cat([z_in, z_in])
            down, mid = controlnet(z2, t, text_in, controlnet_cond=image_in, return_dict=False)
            eps = unet(z2, t, text_in, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
            uncond, cond = eps.chunk(2)
            eps = uncond + options.cfg * (cond - uncond)
            z = scheduler.step(eps.float(), t, z.float(), generator=generators).prev_sample

    if settings.compile:  # compiled ours against the eager plain path (the official computation as it runs)
        from ..restore.compile_models import eager_denoiser

        def plain_eager() -> None:
            with eager_denoiser(pipe):
                ours_plain()

        ours_s, plain_s, base_s = time_interleaved([ours, plain_eager, baseline], settings.repeats, pipe.device)
        without_s: list[list[float]] = []
    else:
        ours_s, plain_s, base_s, *without_s = time_interleaved(
            [ours, ours_plain, baseline, *without], settings.repeats, pipe.device
        )
    set_heap(True)
    ours_ms = 1000 * statistics.median(ours_s) / options.steps
    plain_ms = 1000 * statistics.median(plain_s) / options.steps
    base_ms = 1000 * statistics.median(base_s) / options.steps
    return {
        "size_px": settings.size,
        "latent": list(latents.shape[-2:]),
        "cfg_batch": 2,
        "kept_heap": bool(heap),
        "text_tokens": int(text_in.shape[1]),
        "image_tokens": int(p["image_emb"].shape[1]),
        "steps_per_repeat": options.steps,
        "repeats": len(ours_s),
        "ours_ms": ours_ms,
        "plain_ms": plain_ms,
        "baseline_ms": base_ms,
        "ratio": ours_ms / base_ms,
        # speed-up of the fast paths: median of the per-repeat ratios (each pair ran back to back)
        "fast_ratio": statistics.median(a / b for a, b in zip(ours_s, plain_s, strict=True)),
        # each fast path's own share: time with it switched (off if on by default, else on) over time with
        # the defaults (> 1: the default choice is the faster one)
        "toggled": {
            n: statistics.median(w / a for w, a in zip(ws, ours_s, strict=True))
            for n, ws in zip(left_out, without_s, strict=True)
        },
        "defaults": {**{n: getattr(FastPaths(), n) for n in FastPaths.names()}, **({HEAP: True} if heap else {})},
        "ours_ms_all": [1000 * s / options.steps for s in ours_s],
        "plain_ms_all": [1000 * s / options.steps for s in plain_s],
        "baseline_ms_all": [1000 * s / options.steps for s in base_s],
        "toggled_ms_all": {
            n: [1000 * s / options.steps for s in ws] for n, ws in zip(left_out, without_s, strict=True)
        },
    }


def bench_priors(pipe: RestorePipeline, settings: BenchSettings, step_ms: float | None = None) -> dict[str, Any]:
    """Median ms of each per-image prior and their share of a ``settings.steps``-step denoise."""
    options = RestoreOptions(
        steps=settings.steps, cfg=settings.cfg, tile=None, vae_tile=settings.vae_tile, seed=settings.seed
    )
    lq = random_lq(settings.size, pipe.device, settings.seed)
    generators = [torch.Generator(device=pipe.device).manual_seed(settings.seed)]
    parts: dict[str, Callable[[], Any]] = {
        "text": lambda: pipe.encode_text([CAPTION], options.negative_prompt, options.max_chunks),
        "clip_refine": lambda: pipe.encode_image(lq),
        "processor": lambda: pipe.structure_prior(lq),
        "vae_encode": lambda: pipe.vae_encode(lq, generators, options.vae_tile),
    }
    part_ms = {k: 1000 * statistics.median(time_call(fn, settings.repeats, pipe.device)) for k, fn in parts.items()}
    total = sum(part_ms.values())
    if settings.estimate_run:
        if step_ms is None:
            raise ValueError("estimating the run needs the measured per-step time")
        run_ms, measured = settings.steps * step_ms, False
    else:
        p = _priors(pipe, lq, options)
        latents = p["latents"].float()
        run_ms = (
            1000
            * time_call(
                lambda: pipe.denoise(
                    latents, p["text"], p["negative"], p["image_emb"], p["features"], options, generators
                ),
                1,
                pipe.device,
                warmup=0,
            )[0]
        )
        measured = True
    return {
        "size_px": settings.size,
        "parts_ms": part_ms,
        "priors_ms": total,
        "run_steps": settings.steps,
        "run_ms": run_ms,
        "run_measured": measured,
        "percent": 100 * total / run_ms,
    }


def bench_image(pipe: RestorePipeline, settings: BenchSettings) -> dict[str, Any]:
    """Seconds for one whole restore: (size/4 px input) x4, ``image_steps`` steps, CFG, tiling as set."""
    from ..restore.pipeline import restore_image

    options = RestoreOptions(
        steps=settings.image_steps,
        cfg=settings.cfg,
        tile=settings.tile or None,
        tile_overlap=settings.tile_overlap,
        vae_tile=settings.vae_tile,
        seed=settings.seed,
    )
    lq = random_lq(settings.size // 4, pipe.device, settings.seed)
    s = time_call(
        lambda: restore_image(pipe, lq, CAPTION, options, upscale=4, output_bits=settings.output_bits),
        1,
        pipe.device,
        warmup=1,
    )[0]
    return {
        "size_px": settings.size,
        "input_px": settings.size // 4,
        "steps": settings.image_steps,
        "cfg": settings.cfg,
        "seconds": s,
    }
