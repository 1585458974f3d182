"""Sampling options of a restore, apart from the pipeline so they import without diffusers.

The ComfyUI nodes build their widgets from these defaults and limits when ComfyUI starts; keeping them
here keeps the pack's import light (the models load on the first run).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import OptionError
from .color_fix import COLOR_FIX_METHODS
from .schedulers import SCHEDULERS


@dataclass
class RestoreOptions:
    """Sampling options; the defaults are the paper's."""

    steps: int = 50
    cfg: float = 7.5
    scheduler: str = "ddpm"
    negative_prompt: str = ""
    conditioning_scale: float = 1.0
    start: str = "lq"  # "lq": the LQ latent noised to t=999 (paper); "noise": pure noise
    seed: int = 0
    color_fix: str = "adain"
    tile: int | None = 96  # latent tile (x8 px); None = never tile
    tile_overlap: int = 32
    vae_tile: int | None = 1024  # pixel tile for VAE encode/decode; None = never tile
    max_chunks: int = 4

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every setting before any work; raises :class:`OptionError` naming the setting."""
        _check_int("steps", self.steps, 1, MAX_STEPS)
        _check_number("cfg", self.cfg, 0.0)
        if self.scheduler not in SCHEDULERS:
            raise OptionError("scheduler", f"{self.scheduler!r} is unknown: choose one of {', '.join(SCHEDULERS)}")
        if not isinstance(self.negative_prompt, str):
            raise OptionError("negative_prompt", f"must be a string, got {type(self.negative_prompt).__name__}")
        _check_number("conditioning_scale", self.conditioning_scale, 0.0)
        if self.start not in START_CHOICES:
            raise OptionError("start", f"must be one of {', '.join(START_CHOICES)}, got {self.start!r}")
        _check_int("seed", self.seed, 0, 2**64 - 1)
        if self.color_fix not in COLOR_FIX_METHODS:
            raise OptionError("color_fix", f"{self.color_fix!r} is unknown: choose one of {', '.join(COLOR_FIX_METHODS)}")
        if self.tile is not None:
            _check_int("tile", self.tile, 1)
        _check_int("tile_overlap", self.tile_overlap, 0)
        if self.tile is not None and self.tile_overlap >= self.tile:
            raise OptionError("tile_overlap", f"({self.tile_overlap}) must be smaller than {{tile}} ({self.tile})")
        if self.vae_tile is not None:
            _check_int("vae_tile", self.vae_tile, 8)
        _check_int("max_chunks", self.max_chunks, 1)


MAX_STEPS = 998
"""SD has 1000 training timesteps (0..999). With "leading" spacing and steps_offset 1 (the official
settings) 1000 DDPM/DDIM steps ask for timestep 1000 (IndexError) and 999 DPM++/UniPC steps do too
(NaN), so 998 is the most every sampler can take."""
START_CHOICES = ("lq", "noise")


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"an integer >= {low}"
        raise OptionError(name, f"must be {bound}, got {value!r}")


def _check_number(name: str, value: Any, low: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < low:
        raise OptionError(name, f"must be a finite number >= {low:g}, got {value!r}")


StepCallback = Callable[[int, int, torch.Tensor], Any]
