"""Samplers for restoration: diffusers schedulers configured from the base's scheduler config."""

from __future__ import annotations

import inspect
from typing import Any

import torch

from ..errors import InputError
from ..models.sd_schedule import SD_SCHEDULE
from .choices import SCHEDULERS


def make_scheduler(name: str, config: dict[str, Any] | None = None) -> Any:
    """A scheduler with SD's betas, "leading" spacing and steps_offset 1 (the official inference settings)."""
    if name not in SCHEDULERS:
        raise InputError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    cfg = {**SD_SCHEDULE, **(config or {}), "timestep_spacing": "leading", "steps_offset": 1}
    cfg.pop("_class_name", None)
    import diffusers

    return getattr(diffusers, SCHEDULERS[name]).from_config(cfg)


def step_accepts_generator(scheduler: Any) -> bool:
    return "generator" in inspect.signature(scheduler.step).parameters


def noise_to(scheduler: Any, clean: torch.Tensor, noise: torch.Tensor, timestep: int) -> torch.Tensor:
    """Noise ``clean`` latents to ``timestep`` in the scheduler's own parametrisation.

    Alpha-based samplers take ``sqrt(a)x + sqrt(1-a)eps`` at any training timestep (the paper uses 999);
    sigma-based ones (Euler) start from their first sigma.
    """
    from diffusers import EulerDiscreteScheduler

    if isinstance(scheduler, EulerDiscreteScheduler):
        return scheduler.add_noise(clean, noise, scheduler.timesteps[:1].repeat(clean.shape[0]))
    a = scheduler.alphas_cumprod[timestep].to(device=clean.device, dtype=torch.float32)
    return (a.sqrt() * clean.float() + (1 - a).sqrt() * noise.float()).to(clean.dtype)
