"""Stable Diffusion's training noise schedule: what the UNet was trained on.

The one-step formula (:func:`sspir_core.models.one_step.alpha_bar`) and the samplers of
:mod:`sspir_core.restore.schedulers` both read it; it lives with the networks so that they need no sampler.
"""

from __future__ import annotations

from typing import Any

# SD's training schedule; used when no scheduler config comes with the weights.
SD_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
    "set_alpha_to_one": False,
}
