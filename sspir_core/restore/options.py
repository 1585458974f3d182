"""Sampling options of a restore, apart from the pipeline so they import without diffusers.

The ComfyUI nodes build their widgets from these defaults and limits when ComfyUI starts; keeping them
here keeps the pack's import light (the models load on the first run).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import OptionError
from .choices import COLOR_FIX_METHODS, SCHEDULERS

if TYPE_CHECKING:
    import torch


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
        _check_int("steps", self.steps)
        _check_number("cfg", self.cfg)
        if self.scheduler not in SCHEDULERS:
            raise OptionError("scheduler", f"{self.scheduler!r} is unknown: choose one of {', '.join(SCHEDULERS)}")
        if not isinstance(self.negative_prompt, str):
            raise OptionError("negative_prompt", f"must be a string, got {type(self.negative_prompt).__name__}")
        _check_number("conditioning_scale", self.conditioning_scale)
        if self.start not in START_CHOICES:
            raise OptionError("start", f"must be one of {', '.join(START_CHOICES)}, got {self.start!r}")
        _check_int("seed", self.seed)
        if self.color_fix not in COLOR_FIX_METHODS:
            raise OptionError(
                "color_fix", f"{self.color_fix!r} is unknown: choose one of {', '.join(COLOR_FIX_METHODS)}"
            )
        check_tiling(self.tile, self.tile_overlap, self.vae_tile)
        _check_int("max_chunks", self.max_chunks, 1)


def options_for_mode(
    mode: str,
    steps: int | None = None,
    cfg: float | None = None,
    *,
    warn: Callable[[str], Any] | None = None,
    source: str = "the checkpoint",
    **settings: Any,
) -> RestoreOptions:
    """The options a restore of a checkpoint of ``mode`` (``multi-step``/``one-step``) runs with, as the CLI and
    the sampler nodes both ask for them.

    ``steps``/``cfg`` None take the mode's own (paper: 50 steps, cfg 7.5; one-step: 1 step, no guidance); a
    step count the mode was not trained for is said through ``warn`` (stderr, a log) before the options are
    checked. ``tile``/``vae_tile`` 0 mean never tile (None), as the flags and widgets spell it. Every other
    field of :class:`RestoreOptions` comes in ``settings``; a bad value raises :class:`OptionError`.
    """
    from .one_step import resolve_sampling

    steps, cfg, warning = resolve_sampling(mode, steps, cfg, source)
    if warning and warn is not None:
        warn(warning)
    for name in ("tile", "vae_tile"):
        if name in settings:
            settings[name] = settings[name] or None
    return RestoreOptions(steps=steps, cfg=cfg, **settings)


MAX_STEPS = 998
"""SD has 1000 training timesteps (0..999). With "leading" spacing and steps_offset 1 (the official
settings) 1000 DDPM/DDIM steps ask for timestep 1000 (IndexError) and 999 DPM++/UniPC steps do too
(NaN), so 998 is the most every sampler can take."""
START_CHOICES = ("lq", "noise")


LIMITS: dict[str, tuple[float, float]] = {
    "steps": (1, MAX_STEPS),
    "cfg": (1.0, 30.0),  # 1 = no guidance (one pass); below 1 would push away from the caption
    "conditioning_scale": (0.0, 2.0),
    "seed": (0, 2**64 - 1),  # what torch.Generator.manual_seed takes
    "tile": (1, 512),  # latent px (x8 in pixels); None = never tile
    "tile_overlap": (0, 256),
    "vae_tile": (8, 8192),  # pixels; None = never tile
}
"""Lowest and highest value of each numeric setting: the one source for the checks here and for the ComfyUI
widgets' ``min``/``max``, so an error message never names a bound the widget does not have."""


def check_tiling(tile: int | None, tile_overlap: int, vae_tile: int | None) -> None:
    """The tiling settings alone (ComfyUI checks them when a prompt is queued, before anything runs)."""
    if tile is not None:
        _check_int("tile", tile)
    _check_int("tile_overlap", tile_overlap)
    if tile is not None and tile_overlap >= tile:
        raise OptionError("tile_overlap", f"({tile_overlap}) must be smaller than {{tile}} ({tile})")
    if vae_tile is not None:
        _check_int("vae_tile", vae_tile)


def _bounds(name: str, low: float | None, high: float | None) -> tuple[float, float | None]:
    if low is None:
        low, high = LIMITS[name]
    return low, high


def _check_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> None:
    low, high = _bounds(name, low, high)
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"an integer >= {low}"
        raise OptionError(name, f"must be {bound}, got {value!r}")


def _check_number(name: str, value: Any) -> None:
    low, high = LIMITS[name]
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise OptionError(name, f"must be a finite number between {low:g} and {high:g}, got {value!r}")


StepCallback = Callable[[int, int, "torch.Tensor"], Any]
