"""Training-step benchmark for `sspir bench --parts train`: time, peak memory and (CUDA) the largest batch that fits.

One step = frozen encoders + ControlNet/UNet forward + backward + AdamW update of the SSP-IR parts, with random
weights and random images (timings do not depend on either). Built from the same pieces as the trainer
(:func:`sspir_core.training.step.training_losses`), at the bench's model sizes.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any

import torch


def _setup(config: str, device: torch.device, gradient_checkpointing: bool, seed: int):
    from ..restore.schedulers import make_scheduler
    from ..training.models import TrainModule
    from .settings import build_bench_pipeline

    pipe = build_bench_pipeline(config, device=device, dtype=torch.float32, seed=seed)
    params = pipe.models.set_trainable()
    if gradient_checkpointing:
        pipe.models.unet.enable_gradient_checkpointing()
        pipe.models.controlnet.enable_gradient_checkpointing()
    module = TrainModule(pipe.models).train()
    optimizer = torch.optim.AdamW(params, lr=5e-5, weight_decay=1e-2)
    return pipe, module, optimizer, params, make_scheduler("ddpm", pipe.scheduler_config)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_train_step(
    config: str,
    device: str | torch.device = "cpu",
    dtype: str = "fp32",
    size: int = 256,
    batch: int = 1,
    repeats: int = 3,
    gradient_checkpointing: bool = False,
    find_max_batch: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Median seconds per optimisation step (one micro-step) at ``batch`` x ``size`` px, plus CUDA peak memory."""
    from ..devices import torch_dtype
    from ..models.build import move_module
    from ..training.step import training_losses

    device = torch.device(device)
    pipe, module, optimizer, params, scheduler = _setup(config, device, gradient_checkpointing, seed)
    frozen = torch_dtype(dtype)
    for m in (pipe.vae, pipe.text_encoder, pipe.clip_vision):
        move_module(m, None, frozen)

    def autocast():
        if dtype == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=frozen)

    def step(b: int) -> float:
        g = torch.Generator(device=device).manual_seed(seed)
        gt = torch.rand(b, 3, size, size, device=device, generator=g)
        lq = torch.rand(b, 3, size, size, device=device, generator=g)
        _sync(device)
        t0 = time.perf_counter()
        losses = training_losses(
            pipe,
            module,
            scheduler,
            gt,
            lq,
            ["a photo of a house by a lake"] * b,
            g,
            frozen_dtype=frozen,
            autocast=autocast,
        )
        losses.total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        return time.perf_counter() - t0

    step(batch)  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = [step(batch) for _ in range(repeats)]
    result: dict[str, Any] = {
        "config": config,
        "device": str(device),
        "dtype": dtype,
        "size": size,
        "batch": batch,
        "gradient_checkpointing": gradient_checkpointing,
        "step_s": statistics.median(times),
        "samples_per_s": batch / statistics.median(times),
        "trainable_params": sum(p.numel() for p in params),
    }
    if device.type == "cuda":
        result["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        if find_max_batch:
            result["max_batch"] = _largest_batch(step, batch, device)
    return result


def _largest_batch(step, start: int, device: torch.device, limit: int = 256) -> int:
    """Double the batch until CUDA runs out of memory; the last size that ran."""
    ok, b = start, start * 2
    while b <= limit:
        try:
            step(b)
            ok, b = b, b * 2
        except torch.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
    return ok


def format_train_report(r: dict[str, Any]) -> str:
    line = (
        f"train step ({r['config']}, {r['device']}, {r['dtype']}, {r['batch']} x {r['size']} px"
        f"{', grad ckpt' if r['gradient_checkpointing'] else ''}): {r['step_s'] * 1000:.0f} ms/step, "
        f"{r['samples_per_s']:.2f} samples/s, {r['trainable_params'] / 1e6:.1f}M trainable parameters"
    )
    if "peak_gib" in r:
        line += f", peak {r['peak_gib']:.2f} GiB"
    if "max_batch" in r:
        line += f", largest batch that fits {r['max_batch']}"
    return line
