"""One-step SSP-IR at restore time: its one-timestep "scheduler" and each mode's own steps and CFG.

The networks' side (the t = 999 constants, the x0 formula, the LoRA) is :mod:`sspir_core.models.one_step`; the
file side (the mode and LoRA a checkpoint holds) is :mod:`sspir_core.weights.one_step`.
"""

from __future__ import annotations

from typing import Any

import torch

from ..models.one_step import ONE_STEP, ONE_STEP_TIMESTEP, alpha_bar, predict_x0
from ..models.sd_schedule import SD_SCHEDULE

MULTI_STEP_DEFAULTS = (50, 7.5)
"""The paper's sampling: 50 DDPM steps with CFG 7.5 (``RestoreOptions`` defaults)."""
ONE_STEP_DEFAULTS = (1, 1.0)
"""One evaluation, no CFG: OSEDiff's test_osediff.py runs the UNet once on the positive prompt only."""


class OneStepScheduler:
    """A one-timestep "scheduler" for :meth:`RestorePipeline.denoise`: t = 999 and ``step`` returns x0.

    It lets the one-step restore reuse the pipeline's loop (tiling, CFG, fast paths, progress) unchanged.
    """

    init_noise_sigma = 1.0

    def __init__(self, scheduler_config: dict[str, Any] | None = None, device: torch.device | str = "cpu"):
        self.abar = alpha_bar(scheduler_config)
        self.prediction_type = {**SD_SCHEDULE, **(scheduler_config or {})}["prediction_type"]
        self.timesteps = torch.tensor([ONE_STEP_TIMESTEP], device=device, dtype=torch.long)

    def scale_model_input(self, sample: torch.Tensor, timestep: Any) -> torch.Tensor:
        return sample

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor) -> Any:
        from types import SimpleNamespace

        return SimpleNamespace(prev_sample=predict_x0(sample, model_output, self.abar, self.prediction_type))


def resolve_sampling(
    mode: str, steps: int | None, cfg: float | None, source: str = "the checkpoint"
) -> tuple[int, float, str | None]:
    """(steps, cfg, warning): None takes the mode's own value; a step count the mode was not trained for warns."""
    own_steps, own_cfg = ONE_STEP_DEFAULTS if mode == ONE_STEP else MULTI_STEP_DEFAULTS
    steps = own_steps if steps is None else int(steps)
    cfg = own_cfg if cfg is None else float(cfg)
    warning = None
    if mode == ONE_STEP and steps != 1:
        warning = (
            f"warning: {source} is a one-step SSP-IR model (trained at t = {ONE_STEP_TIMESTEP} only); "
            f"{steps} sampling steps run it as a multi-step sampler it was not trained for. Use 1 step."
        )
    elif mode != ONE_STEP and steps == 1:
        warning = (
            f"warning: {source} is a 50-step SSP-IR model; 1 step runs one DDPM step of it (not a one-step "
            "model), which gives a poor image. Use 50 steps, or a checkpoint trained with --mode one-step."
        )
    return steps, cfg, warning
