"""Peak memory of a tiled restore at growing output sizes: tiling should keep it nearly flat.

On the CPU each size runs in a fresh subprocess (``python -m sspir_core.bench.memory --_memory-child``) so one
size's heap does not hide the next one's peak, and the parent builds no models for it. The CPU measure is
peak tensor bytes from torch's allocator accounting (what CUDA's ``max_memory_allocated`` counts);
``rss`` keeps what the OS sees.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..devices import DTYPE_NAMES, torch_dtype
from ..restore.pipeline import RestoreOptions, RestorePipeline
from .sampler import random_lq
from .settings import CAPTION, CONFIGS, BenchSettings, build_bench_pipeline


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
    from ..restore.pipeline import restore_image

    options = RestoreOptions(
        steps=settings.memory_steps,
        cfg=settings.cfg,
        tile=settings.tile,
        tile_overlap=settings.tile_overlap,
        vae_tile=settings.vae_tile,
        seed=settings.seed,
    )
    small = RestoreOptions(
        steps=1, cfg=settings.cfg, tile=settings.tile, tile_overlap=settings.tile_overlap, vae_tile=settings.vae_tile
    )
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
        return {
            "size_px": size,
            "peak_mib": (peak - base) / 2**20,
            "models_mib": base / 2**20,
            "measure": "cuda",
            "method": "cuda max_memory_allocated - allocated before the run",
            "seconds": time.perf_counter() - t0,
        }
    if settings.memory_method == "tensors":
        base = _rss()
        _, peak = cpu_tensor_peak(lambda: restore_image(pipe, lq, CAPTION, options, upscale=4, output_bits=bits))
        if peak is not None:
            return {
                "size_px": size,
                "peak_mib": peak / 2**20,
                "models_mib": base / 2**20,
                "measure": "tensors",
                "method": "peak CPU tensor bytes allocated during the run (torch allocator accounting)",
                "seconds": time.perf_counter() - t0,
            }
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
    return {
        "size_px": size,
        "peak_mib": (peak - base) / 2**20,
        "models_mib": base / 2**20,
        "measure": "rss",
        "method": "peak RSS - RSS after build + warm-up",
        "seconds": time.perf_counter() - t0,
    }


def _child_args(settings: BenchSettings) -> list[str]:
    return [
        "--config",
        settings.config,
        "--device",
        settings.device,
        "--dtype",
        settings.dtype,
        "--memory-steps",
        str(settings.memory_steps),
        "--tile",
        str(settings.tile),
        "--tile-overlap",
        str(settings.tile_overlap),
        "--vae-tile",
        str(settings.vae_tile),
        "--cfg",
        str(settings.cfg),
        "--seed",
        str(settings.seed),
        "--output-bits",
        str(settings.output_bits or 0),
        "--memory-method",
        settings.memory_method,
    ] + (["--threads", str(settings.threads)] if settings.threads else [])


def bench_memory(settings: BenchSettings, pipe: RestorePipeline | None = None) -> dict[str, Any]:
    """Peak memory per output size; the 2048/1024 (or last/second-to-last) ratio shows whether tiling bounds it."""
    rows = []
    for size in settings.sizes:
        if torch.device(settings.device).type == "cuda" and pipe is not None:
            rows.append(measure_memory(pipe, size, settings))
            continue
        cmd = [sys.executable, "-m", "sspir_core.bench.memory", "--_memory-child", str(size), *_child_args(settings)]
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
    return {
        "rows": rows,
        "tile": settings.tile,
        "tile_overlap": settings.tile_overlap,
        "vae_tile": settings.vae_tile,
        "steps": settings.memory_steps,
        "output_bits": settings.output_bits,
        "ratio_sizes": pair,
        "ratio": ratio,
    }


def _child_main(argv: Sequence[str] | None = None) -> int:
    """``python -m sspir_core.bench.memory --_memory-child SIZE ...``: one memory measurement, one JSON line out."""
    p = argparse.ArgumentParser(prog="python -m sspir_core.bench.memory")
    p.add_argument("--_memory-child", dest="size", type=int, required=True)
    p.add_argument("--config", default="tiny-medium", choices=CONFIGS)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=DTYPE_NAMES)
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
    settings = BenchSettings(
        config=a.config,
        device=a.device,
        dtype=a.dtype,
        memory_steps=a.memory_steps,
        tile=a.tile,
        tile_overlap=a.tile_overlap,
        vae_tile=a.vae_tile,
        cfg=a.cfg,
        seed=a.seed,
        output_bits=a.output_bits or None,
        memory_method=a.memory_method,
    )
    pipe = build_bench_pipeline(a.config, a.device, torch_dtype(a.dtype), a.seed)
    print(json.dumps(measure_memory(pipe, a.size, settings)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
