"""One bench run: build the config once (only if a part measures in this process), measure the parts asked for."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..devices import torch_dtype
from .memory import bench_memory
from .report import environment, summary_line
from .sampler import bench_image, bench_priors, bench_step
from .settings import CAPTION, EXTRA_PARTS, BenchSettings, build_bench_pipeline

IN_PROCESS_PARTS = ("step", "flops", "priors", "image")


def _needs_pipeline(parts: Sequence[str], device: torch.device) -> bool:
    """The memory part on the CPU measures in child processes: the parent must not hold the models too."""
    return any(p in IN_PROCESS_PARTS for p in parts) or ("memory" in parts and device.type == "cuda")


def run_bench(
    settings: BenchSettings, parts: Sequence[str] = ("step", "priors", "memory"), log: Callable[[str], Any] = print
) -> dict[str, Any]:
    """Build the config once (only if a part measures in this process) and measure the requested parts."""
    device = torch.device(settings.device)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    t0 = time.perf_counter()
    pipe = None
    if _needs_pipeline(parts, device):
        pipe = build_bench_pipeline(settings.config, device, torch_dtype(settings.dtype), settings.seed)
    result: dict[str, Any] = {
        "config": settings.config,
        "dtype": settings.dtype,
        "env": environment(device),
        "build_s": time.perf_counter() - t0,
        "compile": settings.compile,
        "parent_built_models": pipe is not None,
    }
    if "flops" in parts:
        assert pipe is not None
        from .flops import restore_flops

        log(f"counting model FLOPs at {settings.size} px...")
        result["flops"] = restore_flops(pipe, settings.size, settings.steps, settings.cfg, CAPTION)
    if settings.compile and pipe is not None:
        from ..restore.compile_models import compile_denoiser

        compile_denoiser(pipe, log=log)
    if "step" in parts:
        assert pipe is not None
        extra = ", each fast path left out" if settings.ablate and not settings.compile else ""
        log(
            f"timing steps ({settings.repeats} x {settings.step_steps} steps: ours, plain path, "
            f"stock diffusers{extra})..."
        )
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
