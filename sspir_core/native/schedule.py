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


def table_timestep(sigma: float, sigma_table: torch.Tensor) -> int | None:
    """The training timestep whose table sigma is exactly ``sigma`` (compared in float32), else None."""
    table = sigma_table.detach().float().cpu()
    hits = torch.nonzero(table == torch.tensor(float(sigma), dtype=torch.float32)).flatten()
    return int(hits[0]) if len(hits) else None


def leading_steps(t0: int, t1: int, train_steps: int = TRAIN_TIMESTEPS) -> int | None:
    """The step count N >= 2 whose leading schedule begins with timesteps ``t0, t1``, else None.

    Leading N steps are ``(N - 1 - i) * r + 1`` with ``r = train_steps // N``: the first two differ by ``r`` and
    ``t0 - 1`` is ``(N - 1) r``, which gives N.
    """
    r = t0 - t1
    if r < 1 or (t0 - 1) % r:
        return None
    n = (t0 - 1) // r + 1
    return n if 2 <= n <= train_steps - 2 and train_steps // n == r else None


def is_full_denoise(sigma: float, sigma_table: torch.Tensor) -> bool:
    """``sigma`` is the table's largest sigma (relative 1e-5) or above: ComfyUI's own full-denoise test."""
    top = float(sigma_table.detach().float().max())
    return float(sigma) >= top * (1 - 1e-5)


def paper_start_applies(sigmas: torch.Tensor, sigma_table: torch.Tensor) -> bool:
    """Whether a sampling over ``sigmas`` gets the official start (the LQ latent noised to t=999).

    Yes when it is a full denoise, told from its first two sigmas alone (all a sampler passes on):

    - the first sigma is the table's top (KSampler at denoise 1 with every scheduler but ``ddim_uniform``);
    - the first two are table sigmas at ``t0 > t1`` that begin the paper's leading schedule of some N >= 2
      steps (SSP-IR Schedule, whole or the first part of a split; all such ``t0`` are >= 501);
    - or they are ``t0 = 1 + k r``, ``t1 = t0 - r`` with no step of ``r`` left above ``t0`` (``t0 + r`` past the
      last timestep): a uniform schedule from t=1 that starts at its top, as ComfyUI's ``ddim_uniform`` at
      denoise 1 (its ``t0`` is ``1 + r * floor((T - 2) / r)``).

    Anything else (KSampler at denoise < 1, KSamplerAdvanced from a later step, the later parts of split
    sigmas) is img2img and keeps ComfyUI's noising. Ambiguity: a sampling whose first two sigmas coincide with one
    of the above starts is treated as a full denoise, since nothing else tells them apart (e.g. ``ddim_uniform``
    with 39 steps at denoise 0.975 runs exactly SSP-IR Schedule's 39 steps). SSP-IR Schedule with 1 step
    (t=1 alone) is such a case the other way: it is indistinguishable from the last step of any schedule, so it
    keeps ComfyUI's start.
    """
    values = [float(s) for s in torch.as_tensor(sigmas).detach().flatten()[:2].cpu()]
    if not values:
        return False
    if is_full_denoise(values[0], sigma_table):
        return True
    if len(values) < 2:
        return False
    train_steps = len(sigma_table)
    t0, t1 = (table_timestep(v, sigma_table) for v in values)
    if t0 is None or t1 is None or t1 >= t0:
        return False
    if leading_steps(t0, t1, train_steps) is not None:
        return True
    r = t0 - t1
    return (t0 - 1) % r == 0 and t0 + r >= train_steps


def paper_start(
    latent: torch.Tensor, noise: torch.Tensor, sigma: float | torch.Tensor, sigma_start: float | torch.Tensor
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
