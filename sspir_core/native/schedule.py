"""The paper's sampling schedule and start, in the k-diffusion terms ComfyUI's samplers use.

ComfyUI samples an eps-model in ``x = x0 + sigma * eps`` (the model sees ``x / sqrt(1 + sigma^2)``, the DDPM
latent at the timestep of ``sigma``; ``sigma_t = sqrt((1 - a_t) / a_t)``). The official SSP-IR inference
(``zyhrainbow/SSP-IR test.py`` with diffusers' DDPMScheduler) runs the "leading" timesteps with
``steps_offset 1`` (981, 961, ..., 1 for 50 steps) but starts from the LQ latent noised to t=999, so its first
model call sees a latent at noise level 999 labelled 981. ComfyUI's samplers always noise to the first sigma
of the schedule, so that start has no SIGMAS of its own: :func:`paper_start` writes it as the k-diffusion
``x`` at the schedule's first sigma, which is what Apply SSP-IR's start option feeds the sampler.

DDIM with eta 0 is the Euler method in this parametrisation (``x' = x + (sigma' - sigma) eps``), so
ComfyUI's ``euler``/``ddim`` samplers on :func:`schedule_sigmas` take diffusers' DDIM steps exactly; diffusers'
DDIM (SD's ``set_alpha_to_one=False``) ends at ``alphas_cumprod[0]``, not at 0, and returns that latent in the
DDPM parametrisation (:func:`to_ddpm`).
"""

from __future__ import annotations

import math

import torch

TRAIN_TIMESTEPS = 1000
START_TIMESTEP = 999
SCHEDULE_ENDS = ("ddpm", "ddim")


def leading_timesteps(steps: int, offset: int = 1, train_steps: int = TRAIN_TIMESTEPS) -> list[int]:
    """diffusers' "leading" spacing: ``arange(steps) * (train_steps // steps)``, reversed, plus ``offset``."""
    if not 1 <= steps <= train_steps - 2:
        raise ValueError(f"steps must be between 1 and {train_steps - 2}, got {steps}")
    ratio = train_steps // steps
    return [i * ratio + offset for i in reversed(range(steps))]


def schedule_sigmas(sigma_table: torch.Tensor, steps: int, end: str = "ddpm") -> torch.Tensor:
    """SIGMAS for the paper's timesteps: ``sigma_table[t]`` for each leading timestep, then the end.

    ``sigma_table``: the model's sigma per training timestep (ComfyUI's ``model_sampling.sigmas``). ``end``:
    ``"ddpm"`` ends at 0 (diffusers' DDPM steps to the clean latent), ``"ddim"`` at ``sigma_table[0]``
    (diffusers' DDIM with ``set_alpha_to_one=False`` ends at ``alphas_cumprod[0]``).
    """
    if end not in SCHEDULE_ENDS:
        raise ValueError(f"end must be one of {', '.join(SCHEDULE_ENDS)}, got {end!r}")
    table = sigma_table.detach().float().cpu()
    ts = leading_timesteps(steps, train_steps=len(table))
    last = torch.zeros(1) if end == "ddpm" else table[:1]
    return torch.cat([table[ts], last])


def start_timesteps(train_steps: int = TRAIN_TIMESTEPS) -> frozenset[int]:
    """The first timestep of the leading schedule of every step count: where the paper's start applies."""
    return frozenset(leading_timesteps(n, train_steps=train_steps)[0] for n in range(1, train_steps - 1))


def is_schedule_start(sigma: float, sigma_table: torch.Tensor) -> bool:
    """True when ``sigma`` is exactly the table sigma of a leading schedule's first timestep.

    That is t = 1 and every t from 501 up (N > 500 steps start at t = N): a full-denoise sampling on the
    paper's schedule starts there, a partial one (img2img from t <= 500) does not.
    """
    table = sigma_table.detach().float().cpu()
    t = int((table.log() - math.log(max(float(sigma), 1e-12))).abs().argmin())
    return float(table[t]) == float(sigma) and t in start_timesteps(len(table))


def paper_start(latent: torch.Tensor, noise: torch.Tensor, sigma: float | torch.Tensor, sigma_start: float | torch.Tensor
                ) -> torch.Tensor:
    """The official start ``sqrt(a) x0 + sqrt(1 - a) eps`` (``a`` of t=999, ``sigma_start``) as the k-diffusion
    ``x`` at the schedule's first ``sigma``, so the model's first input is exactly that latent."""
    s = torch.as_tensor(sigma_start, dtype=torch.float64).item()
    f = torch.as_tensor(sigma, dtype=torch.float64).item()
    scale = math.sqrt(1 + f * f) / math.sqrt(1 + s * s)
    return (latent * scale + noise * (scale * s)).to(latent.dtype)


def to_ddpm(latent: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """k-diffusion ``x`` at ``sigma`` -> the DDPM-parametrised latent ``x / sqrt(1 + sigma^2)``."""
    f = torch.as_tensor(sigma, dtype=torch.float64).item()
    return latent / math.sqrt(1 + f * f)
