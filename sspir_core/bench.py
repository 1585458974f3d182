"""Benchmark of the SSP-IR sampler: what the SSP-IR attentions, the per-image priors and tiling cost.

Figures measured in one run on one config so they can be compared:

1. ms per denoising step of our ControlNet + patched UNet (CFG batch 2, as ``RestorePipeline.denoise``
   runs it, with its inference rewrites, :class:`~sspir_core.models.fast_paths.FastPaths`) next to the
   same sampler without them (the plain path: the official computation) and a stock diffusers
   ControlNet + UNet built from the same UNet config, timed alternately; the ratios are the speed-up
   of the rewrites and the price of the image and pixel attentions. ``--ablate`` adds one run per
   rewrite switched (off, or on for one that is off by default), so each one's share is measured.
2. model FLOPs per step and per image (:mod:`sspir_core.flops`) and the FLOP rate they imply.
3. the one-time per-image priors (text, CLIP image + Refine, Processor, VAE encode) as a share of a
   50-step run: they are computed once, so they should stay a few percent.
4. peak memory of a tiled restore at growing output sizes (through the streamed 8-bit output tail by
   default): tiling should keep it nearly flat.

On the CPU each memory size runs in a fresh subprocess (``python -m sspir_core.bench --_memory-child``)
so one size's heap does not hide the next one's peak, and the parent builds no models for it. A last
line sums everything up for pasting into an issue. Timings are not asserted anywhere: this is a
measuring tool, not a test. Other modules can add parts through :data:`EXTRA_PARTS`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .cpu_memory import heap_bytes, keep_freed_memory, prefault_heap
from .models.fast_paths import FastPaths
from .pipeline import RestoreOptions, RestorePipeline

CONFIGS: tuple[str, ...] = ("tiny", "tiny-medium", "sd15")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CAPTION = "a photo of a red brick house with a wooden door, trees and a blue sky"

# Between the tiny preset and SD1.5: same 4-level layout as SD1.5, ~1/5 of its width.
TINY_MEDIUM_UNET: dict[str, Any] = {
    "block_out_channels": [64, 128, 256, 256],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "attention_head_dim": 4,  # SD1.x's quirk: this number is the head count
    "cross_attention_dim": 256,
    "sample_size": 64,
}
TINY_MEDIUM_CLIP_DIM = 128


@dataclass
class BenchSettings:
    """What one bench run measures; the CLI fills it from its flags."""

    config: str = "tiny-medium"
    device: str = "cpu"
    dtype: str = "fp32"
    size: int = 512  # output px of the step and priors measurements
    steps: int = 50  # the run the priors are compared with
    step_steps: int = 2  # denoising steps per timed repeat of the step measurement
    repeats: int = 5
    estimate_run: bool = False  # estimate the run as steps x per-step time instead of timing it
    sizes: Sequence[int] = (512, 1024, 2048)
    memory_steps: int = 2
    tile: int = 64
    tile_overlap: int = 16
    vae_tile: int = 512
    image: bool = False  # also time a whole restore (priors + steps + decode + colour fix)
    image_steps: int = 50
    cfg: float = 7.5
    seed: int = 0
    threads: int | None = None  # torch CPU threads (1 is steadiest when other processes share the cores)
    output_bits: int | None = 8  # memory runs: 8/16 = the streamed integer tail the CLI writes; None = float
    compile: bool = False  # torch.compile the ControlNet + UNet (falls back to eager with a message)
    ablate: bool = False  # step part: also time the sampler with each fast path left out
    memory_method: str = "tensors"  # CPU memory runs: "tensors" (allocator accounting) or "rss" (what the OS sees)


# Extra parts other modules plug in (e.g. a training step): name -> (measure(settings, pipe), report lines).
# ``measure`` gets the bench pipeline when a built-in part built one, else None (build what you need), and
# returns plain data; ``lines`` turns that data into report lines. Register, then name the part in --parts.
ExtraPart = tuple[Callable[["BenchSettings", "RestorePipeline | None"], dict[str, Any]],
                  Callable[[dict[str, Any]], list[str]]]
EXTRA_PARTS: dict[str, ExtraPart] = {}


# ---------------------------------------------------------------------------------------------- models


def build_bench_pipeline(config: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                         seed: int = 0) -> RestorePipeline:
    """A restore pipeline with random weights at a named size (no files needed: timings do not depend on weights)."""
    if config == "tiny":
        from .presets import tiny_random_pipeline

        return tiny_random_pipeline(device=device, dtype=dtype, seed=seed)
    if config not in CONFIGS:
        raise ValueError(f"unknown config {config!r}; choose one of {', '.join(CONFIGS)}")
    from .build import build_models
    from .loaders import CLIP_VISION_CONFIG, sd_config_dir
    from .loaders.bundled_configs import read_json
    from .presets import random_pipeline

    device = torch.device(device)
    torch.manual_seed(seed)
    if config == "tiny-medium":
        models = build_models(unet_config=TINY_MEDIUM_UNET, clip_dim=TINY_MEDIUM_CLIP_DIM, device=device)
        text_cfg: dict[str, Any] = {
            "vocab_size": 49408, "hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 3,
            "num_attention_heads": 4, "max_position_embeddings": 77, "projection_dim": 256,
        }
        vae_cfg: dict[str, Any] = {
            "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
            "block_out_channels": [16, 32, 64, 64], "layers_per_block": 1, "latent_channels": 4,
            "norm_num_groups": 8, "scaling_factor": 0.18215, "sample_size": 256,
        }
        vision = {"hidden_size": TINY_MEDIUM_CLIP_DIM, "intermediate_size": 4 * TINY_MEDIUM_CLIP_DIM,
                  "num_hidden_layers": 4, "num_attention_heads": 4, "image_size": 224, "patch_size": 14,
                  "hidden_act": "quick_gelu"}
    else:  # sd15: full size
        models = build_models("sd15", device=device)
        sd_dir = sd_config_dir("sd15")
        text_cfg = {k: v for k, v in read_json(sd_dir / "text_encoder" / "config.json").items() if not k.startswith("_")}
        vae_cfg = {k: v for k, v in read_json(sd_dir / "vae" / "config.json").items() if not k.startswith("_")}
        vision = read_json(CLIP_VISION_CONFIG)
    return random_pipeline(models, text_cfg, vae_cfg, vision, device, dtype)


def build_stock_pair(pipe: RestorePipeline) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A stock diffusers UNet + ControlNet from the same UNet config as ``pipe`` (random weights): the baseline."""
    from diffusers import ControlNetModel

    from .build import stock_unet_from_config

    with torch.device(pipe.device):
        unet = stock_unet_from_config(dict(pipe.models.unet.config))
        controlnet = ControlNetModel.from_unet(unet)
    for m in (unet, controlnet):
        m.eval().requires_grad_(False)
        if pipe.dtype != torch.float32:  # a no-op cast would only make diffusers warn
            m.to(dtype=pipe.dtype)
    return unet, controlnet


# ---------------------------------------------------------------------------------------------- timing

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


def time_interleaved(fns: Sequence[Callable[[], Any]], repeats: int, device: torch.device,
                     warmup: int = 1) -> list[list[float]]:
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
    return {"text": text, "negative": negative, "image_emb": pipe.encode_image(lq),
            "features": pipe.structure_prior(lq)[0], "latents": pipe.vae_encode(lq, generators, options.vae_tile)}


def bench_step(pipe: RestorePipeline, settings: BenchSettings) -> dict[str, Any]:
    """Median ms per CFG step: ``RestorePipeline.denoise`` itself vs the same loop on stock diffusers models."""
    from .schedulers import make_scheduler

    options = RestoreOptions(steps=settings.step_steps, cfg=settings.cfg, tile=None, vae_tile=None,
                             seed=settings.seed)
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
            pipe.denoise(latents, p["text"], p["negative"], p["image_emb"], p["features"], options, generators,
                         paths=paths)
            if keep_heap and not state["size"]:  # the heap one kept-heap run leaves (fixed: never chases growth)
                state["size"] = heap_bytes() or 0
        return run

    ours, ours_plain = sampler(FastPaths()), sampler(FastPaths.none(), keep_heap=False)
    left_out: list[str] = FastPaths.names() + ([HEAP] if heap else []) if settings.ablate and not settings.compile else []
    without = [sampler(FastPaths(), keep_heap=False) if n == HEAP else sampler(FastPaths().toggled(n)) for n in left_out]

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
            eps = unet(z2, t, text_in, down_block_additional_residuals=down,
                       mid_block_additional_residual=mid).sample
            uncond, cond = eps.chunk(2)
            eps = uncond + options.cfg * (cond - uncond)
            z = scheduler.step(eps.float(), t, z.float(), generator=generators).prev_sample

    if settings.compile:  # compiled ours against the eager plain path (the official computation as it runs)
        from .compile_models import eager_denoiser

        def plain_eager() -> None:
            with eager_denoiser(pipe):
                ours_plain()

        ours_s, plain_s, base_s = time_interleaved([ours, plain_eager, baseline], settings.repeats, pipe.device)
        without_s: list[list[float]] = []
    else:
        ours_s, plain_s, base_s, *without_s = time_interleaved(
            [ours, ours_plain, baseline, *without], settings.repeats, pipe.device)
    set_heap(True)
    ours_ms = 1000 * statistics.median(ours_s) / options.steps
    plain_ms = 1000 * statistics.median(plain_s) / options.steps
    base_ms = 1000 * statistics.median(base_s) / options.steps
    return {
        "size_px": settings.size, "latent": list(latents.shape[-2:]), "cfg_batch": 2, "kept_heap": bool(heap),
        "text_tokens": int(text_in.shape[1]), "image_tokens": int(p["image_emb"].shape[1]),
        "steps_per_repeat": options.steps, "repeats": len(ours_s),
        "ours_ms": ours_ms, "plain_ms": plain_ms, "baseline_ms": base_ms, "ratio": ours_ms / base_ms,
        # speed-up of the fast paths: median of the per-repeat ratios (each pair ran back to back)
        "fast_ratio": statistics.median(a / b for a, b in zip(ours_s, plain_s, strict=True)),
        # each fast path's own share: time with it switched (off if on by default, else on) over time with
        # the defaults (> 1: the default choice is the faster one)
        "toggled": {n: statistics.median(w / a for w, a in zip(ws, ours_s, strict=True))
                    for n, ws in zip(left_out, without_s, strict=True)},
        "defaults": {**{n: getattr(FastPaths(), n) for n in FastPaths.names()}, **({HEAP: True} if heap else {})},
        "ours_ms_all": [1000 * s / options.steps for s in ours_s],
        "plain_ms_all": [1000 * s / options.steps for s in plain_s],
        "baseline_ms_all": [1000 * s / options.steps for s in base_s],
        "toggled_ms_all": {n: [1000 * s / options.steps for s in ws] for n, ws in zip(left_out, without_s, strict=True)},
    }


def bench_priors(pipe: RestorePipeline, settings: BenchSettings, step_ms: float | None = None) -> dict[str, Any]:
    """Median ms of each per-image prior and their share of a ``settings.steps``-step denoise."""
    options = RestoreOptions(steps=settings.steps, cfg=settings.cfg, tile=None, vae_tile=settings.vae_tile,
                             seed=settings.seed)
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
        run_ms = 1000 * time_call(lambda: pipe.denoise(latents, p["text"], p["negative"], p["image_emb"],
                                                       p["features"], options, generators), 1, pipe.device,
                                  warmup=0)[0]
        measured = True
    return {"size_px": settings.size, "parts_ms": part_ms, "priors_ms": total, "run_steps": settings.steps,
            "run_ms": run_ms, "run_measured": measured, "percent": 100 * total / run_ms}


# ---------------------------------------------------------------------------------------------- memory


class _RssSampler:
    """Samples this process's RSS in a thread: its peak after a point, unlike ru_maxrss (whole life)."""

    def __init__(self, interval: float = 0.002):
        import psutil

        self._proc = psutil.Process()
        self.interval = interval
        self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def _rss() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:  # Linux fallback
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


MEMORY_METHODS = ("tensors", "rss")


def cpu_tensor_peak(fn: Callable[[], Any]) -> tuple[Any, int | None]:
    """``fn()`` and the peak bytes of CPU tensor memory allocated during it and live at the same time.

    The CPU counterpart of CUDA's ``max_memory_allocated`` minus the allocation before the run: torch's
    CPU allocator reports every allocation and free to the profiler with its running total; the peak is
    taken above the total at the start (memory held before, such as the weights, is not counted). Unlike
    RSS it does not move with the C heap's fragmentation or with memory freed but not yet returned to the
    OS, so it is repeatable to the byte. Returns ``(result, None)`` where this torch's profiler has no
    such record.
    """
    try:
        from torch._C._profiler import _EventType
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        return fn(), None
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    try:
        stack = list(prof.profiler.kineto_results.experimental_event_tree())
    except AttributeError:
        return result, None
    # The allocator's running total persists between profiling sessions (and misses frees made outside
    # one), so the peak is taken above the total just before this session's first event.
    first: tuple[int, int] | None = None  # (time, total before the event)
    top = 0
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        if event.tag == _EventType.Allocation and event.extra_fields.device.type == "cpu":
            fields = event.extra_fields
            top = max(top, int(fields.total_allocated))
            if first is None or event.start_time_ns < first[0]:
                first = (event.start_time_ns, int(fields.total_allocated) - int(fields.alloc_size))
    return result, (0 if first is None else max(0, top - first[1]))


def measure_memory(pipe: RestorePipeline, size: int, settings: BenchSettings) -> dict[str, Any]:
    """Peak memory of one tiled restore to ``size`` px (input size/4, x4) above what the loaded models hold.

    CUDA: max_memory_allocated minus the allocation before the run. CPU, ``memory_method="tensors"`` (the
    default): the same quantity from the CPU allocator's accounting (:func:`cpu_tensor_peak`). CPU, ``"rss"``:
    peak RSS minus the RSS after the models are built and a 64 px warm-up restore ran (so weights,
    libraries and one-time kernel set-up are not counted); the peak is the larger of a 2 ms RSS sampler and
    ru_maxrss when it grew during the run. RSS includes what the C heap keeps after frees, so it moves by
    100 MiB or more between identical runs.
    """
    if settings.memory_method not in MEMORY_METHODS:
        raise ValueError(f"memory_method must be one of {', '.join(MEMORY_METHODS)}, got {settings.memory_method!r}")
    from .pipeline import restore_image

    options = RestoreOptions(steps=settings.memory_steps, cfg=settings.cfg, tile=settings.tile,
                             tile_overlap=settings.tile_overlap, vae_tile=settings.vae_tile, seed=settings.seed)
    small = RestoreOptions(steps=1, cfg=settings.cfg, tile=settings.tile, tile_overlap=settings.tile_overlap,
                           vae_tile=settings.vae_tile)
    lq = random_lq(size // 4, pipe.device, settings.seed)
    bits = settings.output_bits
    restore_image(pipe, random_lq(16, pipe.device), CAPTION, small, upscale=4, output_bits=bits)  # warm-up
    gc.collect()
    t0 = time.perf_counter()
    if pipe.device.type == "cuda":
        torch.cuda.synchronize(pipe.device)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(pipe.device)
        torch.cuda.reset_peak_memory_stats(pipe.device)
        restore_image(pipe, lq, CAPTION, options, upscale=4, output_bits=bits)
        torch.cuda.synchronize(pipe.device)
        peak = torch.cuda.max_memory_allocated(pipe.device)
        return {"size_px": size, "peak_mib": (peak - base) / 2**20, "models_mib": base / 2**20, "measure": "cuda",
                "method": "cuda max_memory_allocated - allocated before the run",
                "seconds": time.perf_counter() - t0}
    if settings.memory_method == "tensors":
        base = _rss()
        _, peak = cpu_tensor_peak(lambda: restore_image(pipe, lq, CAPTION, options, upscale=4, output_bits=bits))
        if peak is not None:
            return {"size_px": size, "peak_mib": peak / 2**20, "models_mib": base / 2**20, "measure": "tensors",
                    "method": "peak CPU tensor bytes allocated during the run (torch allocator accounting)",
                    "seconds": time.perf_counter() - t0}
        # this torch keeps no allocation totals: measure RSS instead (the method field says so)
    base, maxrss_before = _rss(), _maxrss()
    try:
        with _RssSampler() as sampler:
            restore_image(pipe, lq, CAPTION, options, upscale=4, output_bits=bits)
        sampled = sampler.peak
    except ImportError:
        restore_image(pipe, lq, CAPTION, options, upscale=4, output_bits=bits)
        sampled = _rss()
    maxrss = _maxrss()
    peak = max(sampled, maxrss if maxrss > maxrss_before else 0)
    return {"size_px": size, "peak_mib": (peak - base) / 2**20, "models_mib": base / 2**20, "measure": "rss",
            "method": "peak RSS - RSS after build + warm-up", "seconds": time.perf_counter() - t0}


def _child_args(settings: BenchSettings) -> list[str]:
    return ["--config", settings.config, "--device", settings.device, "--dtype", settings.dtype,
            "--memory-steps", str(settings.memory_steps), "--tile", str(settings.tile),
            "--tile-overlap", str(settings.tile_overlap), "--vae-tile", str(settings.vae_tile),
            "--cfg", str(settings.cfg), "--seed", str(settings.seed),
            "--output-bits", str(settings.output_bits or 0), "--memory-method", settings.memory_method] + (
        ["--threads", str(settings.threads)] if settings.threads else [])


def bench_memory(settings: BenchSettings, pipe: RestorePipeline | None = None) -> dict[str, Any]:
    """Peak memory per output size; the 2048/1024 (or last/second-to-last) ratio shows whether tiling bounds it."""
    rows = []
    for size in settings.sizes:
        if torch.device(settings.device).type == "cuda" and pipe is not None:
            rows.append(measure_memory(pipe, size, settings))
            continue
        cmd = [sys.executable, "-m", "sspir_core.bench", "--_memory-child", str(size), *_child_args(settings)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"memory child for {size} px failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        rows.append(json.loads(lines[-1]))
    by_size = {r["size_px"]: r["peak_mib"] for r in rows}
    ratio, pair = None, None
    if len(by_size) >= 2:
        pair = [1024, 2048] if {1024, 2048} <= by_size.keys() else sorted(by_size)[-2:]
        ratio = by_size[pair[1]] / by_size[pair[0]] if by_size[pair[0]] > 0 else None
    return {"rows": rows, "tile": settings.tile, "tile_overlap": settings.tile_overlap,
            "vae_tile": settings.vae_tile, "steps": settings.memory_steps, "output_bits": settings.output_bits,
            "ratio_sizes": pair, "ratio": ratio}


def bench_image(pipe: RestorePipeline, settings: BenchSettings) -> dict[str, Any]:
    """Seconds for one whole restore: (size/4 px input) x4, ``image_steps`` steps, CFG, tiling as set."""
    from .pipeline import restore_image

    options = RestoreOptions(steps=settings.image_steps, cfg=settings.cfg, tile=settings.tile or None,
                             tile_overlap=settings.tile_overlap, vae_tile=settings.vae_tile, seed=settings.seed)
    lq = random_lq(settings.size // 4, pipe.device, settings.seed)
    s = time_call(lambda: restore_image(pipe, lq, CAPTION, options, upscale=4, output_bits=settings.output_bits),
                  1, pipe.device, warmup=1)[0]
    return {"size_px": settings.size, "input_px": settings.size // 4, "steps": settings.image_steps,
            "cfg": settings.cfg, "seconds": s}


# ---------------------------------------------------------------------------------------------- the run


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    else:
        env["cpu_count"] = os.cpu_count()
        try:
            env["load_avg_1m"] = os.getloadavg()[0]
        except OSError:
            pass
    return env


IN_PROCESS_PARTS = ("step", "flops", "priors", "image")


def _needs_pipeline(parts: Sequence[str], device: torch.device) -> bool:
    """The memory part on the CPU measures in child processes: the parent must not hold the models too."""
    return any(p in IN_PROCESS_PARTS for p in parts) or ("memory" in parts and device.type == "cuda")


def run_bench(settings: BenchSettings, parts: Sequence[str] = ("step", "priors", "memory"),
              log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Build the config once (only if a part measures in this process) and measure the requested parts."""
    device = torch.device(settings.device)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    t0 = time.perf_counter()
    pipe = None
    if _needs_pipeline(parts, device):
        pipe = build_bench_pipeline(settings.config, device, DTYPES[settings.dtype], settings.seed)
    result: dict[str, Any] = {"config": settings.config, "dtype": settings.dtype, "env": environment(device),
                              "build_s": time.perf_counter() - t0, "compile": settings.compile,
                              "parent_built_models": pipe is not None}
    if "flops" in parts:
        assert pipe is not None
        from .flops import restore_flops

        log(f"counting model FLOPs at {settings.size} px...")
        result["flops"] = restore_flops(pipe, settings.size, settings.steps, settings.cfg, CAPTION)
    if settings.compile and pipe is not None:
        from .compile_models import compile_denoiser

        compile_denoiser(pipe, log=log)
    if "step" in parts:
        assert pipe is not None
        extra = ", each fast path left out" if settings.ablate and not settings.compile else ""
        log(f"timing steps ({settings.repeats} x {settings.step_steps} steps: ours, plain path, "
            f"stock diffusers{extra})...")
        result["step"] = bench_step(pipe, settings)
    if "priors" in parts:
        assert pipe is not None
        how = "estimating" if settings.estimate_run else "timing"
        log(f"timing priors and {how} a {settings.steps}-step run...")
        step_ms = result.get("step", {}).get("ours_ms")
        result["priors"] = bench_priors(pipe, settings, step_ms)
    if "image" in parts:
        assert pipe is not None
        log(f"timing a whole {settings.size} px restore ({settings.image_steps} steps)...")
        result["image"] = bench_image(pipe, settings)
    if "memory" in parts:
        log(f"peak memory at {', '.join(map(str, settings.sizes))} px ({settings.memory_steps} steps each)...")
        result["memory"] = bench_memory(settings, pipe)
    for name, (measure, _) in EXTRA_PARTS.items():
        if name in parts:
            log(f"measuring {name}...")
            result[name] = measure(settings, pipe)
    result["total_s"] = time.perf_counter() - t0
    result["summary"] = summary_line(result)
    return result


def _si(flops: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if flops >= scale:
            return f"{flops / scale:.2f} {unit}"
    return f"{flops:.0f} FLOP"


def summary_line(r: dict[str, Any]) -> str:
    """One line with the headline figures, to paste into an issue."""
    env = r["env"]
    where = env.get("gpu") or f"cpu x{env.get('threads')}"
    bits = [f"sspir bench {r['config']} {r['dtype']}{' compiled' if r.get('compile') else ''} on {where} "
            f"(torch {env['torch']})"]
    if "step" in r:
        s = r["step"]
        cache = "" if s["fast_ratio"] != s["fast_ratio"] else f", x{s['fast_ratio']:.3f} plain path"
        bits.append(f"{s['size_px']}px step {s['ours_ms']:.1f} ms (x{s['ratio']:.2f} stock{cache})")
    if "flops" in r:
        f = r["flops"]
        per = f" = {_si(f['step_flops'] / (r['step']['ours_ms'] / 1000))}/s" if "step" in r else ""
        bits.append(f"{_si(f['step_flops'])}/step{per}, {_si(f['image_flops'])}/image ({f['steps']} steps)")
    if "image" in r:
        i = r["image"]
        bits.append(f"{i['input_px']}px x4 {i['steps']} steps: {i['seconds']:.2f} s/image")
    if "memory" in r and r["memory"]["ratio"] is not None:
        m = r["memory"]
        peaks = ", ".join(f"{row['size_px']}px {row['peak_mib']:.0f} MiB" for row in m["rows"])
        bits.append(f"tiled peak above weights ({m['rows'][0].get('measure', '?')}) {peaks}, "
                    f"{m['ratio_sizes'][1]}/{m['ratio_sizes'][0]} {m['ratio']:.2f}")
    return "; ".join(bits)


def format_report(r: dict[str, Any]) -> str:
    """The compact table ``sspir bench`` prints."""
    env = r["env"]
    where = env.get("gpu") or f"cpu ({env.get('threads')} threads, load {env.get('load_avg_1m', float('nan')):.2f})"
    lines = [f"sspir bench: config {r['config']}, {r['dtype']}, {env['device']}: {where}, torch {env['torch']}"]
    if "step" in r:
        s = r["step"]
        lines += [
            "",
            f"1. per denoising step: latent {s['latent'][0]}x{s['latent'][1]} ({s['size_px']} px), CFG batch "
            f"{s['cfg_batch']}, {s['text_tokens']} text tokens, median of {s['repeats']} x {s['steps_per_repeat']} "
            "steps after a warm-up",
            f"   {'SSP-IR (ControlNet+Processor feats, image+pixel attn)':58s} {s['ours_ms']:10.1f} ms/step",
            f"   {'SSP-IR plain path (no fast paths: the official computation)':58s} {s['plain_ms']:10.1f} ms/step",
            *(["     (CPU: ours and stock with the kept heap of `sspir`, plain with glibc's mmap use)"]
              if s.get("kept_heap") else []),
            f"   {'stock diffusers ControlNet + UNet (same UNet config)':58s} {s['baseline_ms']:10.1f} ms/step",
            f"   {'ratio (cost of the SSP-IR attentions)':58s} {s['ratio']:10.2f} x",
            f"   {('compiled ours' if r.get('compile') else 'ours') + ' vs plain (median of paired repeats)':58s} "
            f"{s['fast_ratio']:10.3f} x",
        ]
        lines += [f"   {'  time with ' + n + (' off' if s['defaults'][n] else ' on') + ' / with the defaults':58s} "
                  f"{v:10.3f} x" for n, v in s["toggled"].items()]
    if "flops" in r:
        f = r["flops"]
        lines += ["", f"model FLOPs (matmul, conv, attention; untiled {f['size_px']} px, CFG batch {f['cfg_batch']})",
                  f"   {'per denoising step (ControlNet + UNet)':40s} {_si(f['step_flops']):>14s}"]
        if "step_flops_plain" in f:
            lines.append(f"   {'  the plain path':40s} {_si(f['step_flops_plain']):>14s} "
                         f"(fast paths: x{f['step_flops'] / f['step_flops_plain']:.3f})")
        lines += [f"   {'once per image: ' + k:40s} {_si(v):>14s}" for k, v in f["parts_flops"].items()]
        lines.append(f"   {'per image (' + str(f['steps']) + ' steps + the above)':40s} {_si(f['image_flops']):>14s}")
        if "step" in r:
            achieved = f["step_flops"] / (r["step"]["ours_ms"] / 1000)
            lines.append(f"   {'achieved in the timed steps':40s} {_si(achieved) + '/s':>14s} "
                         "(divide by the card's peak for utilisation)")
        if "image" in r:
            lines.append(f"   {'achieved over the whole restore':40s} "
                         f"{_si(f['image_flops'] / r['image']['seconds']) + '/s':>14s} (untiled count)")
    if "priors" in r:
        p = r["priors"]
        run = "measured" if p["run_measured"] else f"ESTIMATED as {p['run_steps']} x measured ms/step"
        lines += ["", f"2. one-time priors per image at {p['size_px']} px vs a {p['run_steps']}-step denoise ({run})"]
        lines += [f"   {k:22s} {v:10.1f} ms" for k, v in p["parts_ms"].items()]
        lines += [f"   {'priors total':22s} {p['priors_ms']:10.1f} ms",
                  f"   {str(p['run_steps']) + '-step denoise':22s} {p['run_ms']:10.1f} ms",
                  f"   {'priors / run':22s} {p['percent']:10.2f} %   (target <= 5%)"]
    if "image" in r:
        i = r["image"]
        lines += ["", f"3. whole restore {i['input_px']} px x4 -> {i['size_px']} px, {i['steps']} steps, CFG "
                      f"{i['cfg']}: {i['seconds']:.2f} s/image"]
    if "memory" in r:
        m = r["memory"]
        lines += ["", f"4. peak memory of a tiled restore (latent tile {m['tile']}, overlap {m['tile_overlap']}, "
                      f"VAE tile {m['vae_tile']} px, {m['steps']} steps)",
                  f"   measured as {m['rows'][0]['method']}; the weights ({m['rows'][0]['models_mib']:.0f} MiB with "
                  "libraries) are not counted; output "
                  + (f"{m['output_bits']}-bit integers, streamed" if m.get("output_bits") else "float")]
        lines += [f"   {row['size_px']:5d} px {row['peak_mib']:10.1f} MiB   ({row['seconds']:.1f} s)" for row in m["rows"]]
        if m["ratio"] is not None:
            a, b = m["ratio_sizes"]
            lines.append(f"   ratio {b}/{a}: {m['ratio']:.2f}   (target <= 1.3 with tiling on)")
    for name, (_, report_lines) in EXTRA_PARTS.items():
        if name in r:
            lines += ["", *report_lines(r[name])]
    lines += ["", f"total {r['total_s']:.1f} s (build {r['build_s']:.1f} s)"]
    if "summary" in r:
        lines += ["", "summary (paste into an issue):", r["summary"]]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- memory child


def _child_main(argv: Sequence[str] | None = None) -> int:
    """``python -m sspir_core.bench --_memory-child SIZE ...``: one memory measurement, one JSON line out."""
    p = argparse.ArgumentParser(prog="python -m sspir_core.bench")
    p.add_argument("--_memory-child", dest="size", type=int, required=True)
    p.add_argument("--config", default="tiny-medium", choices=CONFIGS)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=tuple(DTYPES))
    p.add_argument("--memory-steps", type=int, default=2)
    p.add_argument("--tile", type=int, default=64)
    p.add_argument("--tile-overlap", type=int, default=16)
    p.add_argument("--vae-tile", type=int, default=512)
    p.add_argument("--cfg", type=float, default=7.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-bits", type=int, default=8, choices=(0, 8, 16), help="0: the float output path")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--memory-method", default="tensors", choices=MEMORY_METHODS)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    # glibc's default heap here, whatever the parent runs with: a kept heap would hold on to the memory
    # freed while the models are built and cast, and hide the restore's own peak inside it.
    settings = BenchSettings(config=a.config, device=a.device, dtype=a.dtype, memory_steps=a.memory_steps,
                             tile=a.tile, tile_overlap=a.tile_overlap, vae_tile=a.vae_tile, cfg=a.cfg, seed=a.seed,
                             output_bits=a.output_bits or None, memory_method=a.memory_method)
    pipe = build_bench_pipeline(a.config, a.device, DTYPES[a.dtype], a.seed)
    print(json.dumps(measure_memory(pipe, a.size, settings)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
