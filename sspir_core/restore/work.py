"""The work of one run, counted before it starts, and the cancel checks and progress while it runs.

A large restore on the CPU takes minutes to hours, and its time goes to different places: the Processor and the
CLIP tower (the priors), the VAE encode, every latent tile of every step, the VAE decode. :func:`plan_restore`
counts the units of each stage (one unit = one tile, or one forward when untiled) with the same
:func:`~sspir_core.restore.tiling.tile_grid` the loops use, so a front end can announce the size, the tile grid and an
estimate before anything runs. A :class:`Run` goes through the pipeline: every loop calls :meth:`Run.unit`
before each unit (progress, and a cancel check), and while a run has a check, every block of the models calls
:meth:`Run.interrupt` too (see :func:`cancel_points`), so Cancel acts within one block of one tile, wherever
the time goes. Never imports ComfyUI: the nodes pass ComfyUI's interrupt check in.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from torch import nn

from .tiling import tile_grid, vae_encode_boxes

log = logging.getLogger("sspir")

STAGES = ("clip", "processor", "vae encode", "denoise", "vae decode")
_UNIT_NAMES = {
    "clip": "CLIP pass(es)",
    "processor": "Processor tile(s)",
    "vae encode": "VAE encode tile(s)",
    "vae decode": "VAE decode tile(s)",
}


@dataclass(frozen=True)
class Speed:
    """The denoising speed of a run: seconds per latent pixel of one denoise unit, and the mean latent area of
    the units it was measured on."""

    seconds_per_px: float
    unit_area: float

    def estimate(self, units: int, unit_area: float) -> float | None:
        """Seconds for ``units`` denoise units of ``unit_area`` latent px, scaled by the area; None when the units
        differ from the measured ones by more than 2x in area: attention's cost grows faster than the area, so
        a 48 px run says nothing about a 3000x2000 one (issue 27)."""
        if not units or not unit_area or not 0.5 <= unit_area / self.unit_area <= 2:
            return None
        return self.seconds_per_px * unit_area * units


_RATES: dict[object, Speed] = {}  # the last run's denoising speed, by the caller's rate key


def vae_encode_overlap(vae_tile: int) -> int:
    """Pixel overlap of the tiled VAE encode for a ``vae_tile`` px setting (the pipeline's and the native route's)."""
    return min(128, vae_tile // 4)


def vae_encode_grid(h: int, w: int, vae_tile: int | None) -> list:
    """The VAE encode's tiles for a padded ``h x w`` px image (as :meth:`RestorePipeline.vae_encode` lays them)."""
    if vae_tile is None:
        return [(0, h // 8, 0, w // 8)]
    return vae_encode_boxes(h, w, vae_tile, vae_encode_overlap(vae_tile))


def vae_decode_tile(vae_tile: int | None) -> tuple[int | None, int]:
    """(latent tile, latent overlap) of the VAE decode for a ``vae_tile`` px setting."""
    if vae_tile is None:
        return None, 0
    tile = max(8, vae_tile // 8)
    return tile, min(16, tile // 4)


def vae_decode_grid(h: int, w: int, vae_tile: int | None) -> list:
    tile, overlap = vae_decode_tile(vae_tile)
    return [(0, h // 8, 0, w // 8)] if tile is None else tile_grid(h // 8, w // 8, tile, overlap)


def latent_grid(h: int, w: int, tile: int | None, overlap: int) -> list:
    """The denoiser's tiles of an ``h x w`` latent (one box when untiled or when it fits one tile)."""
    if tile is None or (h <= tile and w <= tile):
        return [(0, h, 0, w)]
    return tile_grid(h, w, tile, overlap)


def processor_tiles(h: int, w: int, tile: int | None) -> int:
    """Tiles of :meth:`Processor.forward_tiled` (non-overlapping ``tile`` px squares, halo aside)."""
    if tile is None or (h <= tile and w <= tile):
        return 1
    return math.ceil(h / tile) * math.ceil(w / tile)


@dataclass(frozen=True)
class WorkPlan:
    """Units of work per stage (in :data:`STAGES` order) and what to say about them."""

    units: dict[str, int]
    steps: int = 0
    per_step: int = 0  # denoise units per step (latent tiles x caption groups)
    lines: tuple[str, ...] = ()
    unit_area: float = 0.0  # mean latent px of one denoise unit (a tile, or the whole latent)

    @property
    def total(self) -> int:
        return sum(self.units.values())

    def describe(self, speed: Speed | None = None) -> str:
        """One paragraph: the sizes, each stage's units, and a time estimate when a speed measured on units of
        about this size is known."""
        parts = [
            f"{self.steps} steps x {self.per_step} latent tile(s)"
            if stage == "denoise"
            else f"{n} {_UNIT_NAMES[stage]}"
            for stage, n in self.units.items()
            if n
        ]
        text = "; ".join([*self.lines, ", ".join(parts)])
        seconds = None if speed is None else speed.estimate(self.units.get("denoise", 0), self.unit_area)
        if seconds is not None:
            text += f"; about {_duration(seconds)} of denoising at the last run's speed (scaled to this size)"
        elif self.units.get("denoise"):
            text += "; time estimate after the first step"
        return text


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def plan_restore(
    padded: tuple[int, int],
    batch: int,
    steps: int,
    guided: bool,
    tile: int | None,
    tile_overlap: int,
    vae_tile: int | None,
    start: str = "lq",
    groups: int = 1,
    clip: bool = True,
    processor: bool = True,
    output: tuple[int, int] | None = None,
) -> WorkPlan:
    """The units of a restore of a padded ``(H, W)`` px LQ batch (``clip``/``processor``: whether those priors are
    computed here, not given). Each caption group runs every stage once."""
    h, w = padded
    lat = latent_grid(h // 8, w // 8, tile, tile_overlap)
    units = {
        "clip": groups if clip else 0,
        "processor": groups * processor_tiles(h, w, None if tile is None else 8 * tile) if processor else 0,
        "vae encode": groups * len(vae_encode_grid(h, w, vae_tile)) if start == "lq" else 0,
        "denoise": groups * steps * len(lat),
        "vae decode": groups * len(vae_decode_grid(h, w, vae_tile)),
    }
    rows = len({b[0] for b in lat})
    out_w, out_h = output or (w, h)
    lines = (
        f"{batch} image(s) to {out_w}x{out_h} px ({out_w * out_h / 1e6:.1f} MP)"
        + (f", latent tiles {rows}x{len(lat) // rows} of {tile} (overlap {tile_overlap})" if len(lat) > 1 else "")
        + (", CFG doubles each denoiser pass" if guided else ""),
    )
    unit_area = sum((y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in lat) / len(lat)
    return WorkPlan(units, steps=steps, per_step=groups * len(lat), lines=lines, unit_area=unit_area)


def plan_prior(stage: str, units: int, size: tuple[int, int], batch: int) -> WorkPlan:
    """A prior computed on its own (a ComfyUI prior node), at output size ``(width, height)``."""
    return WorkPlan({stage: units}, lines=(f"{stage} prior of {batch} image(s) at {size[0]}x{size[1]} px",))


@dataclass
class Run:
    """Cancel checks and progress of one run.

    ``check`` raises to cancel (ComfyUI's interrupt); ``on_progress(done, total)`` is told after each unit
    starts; ``rate_key`` names the setting whose denoise speed is remembered for the next plan's estimate.
    """

    check: Callable[[], None] | None = None
    on_progress: Callable[[int, int], None] | None = None
    rate_key: object = None
    done: int = 0
    total: int = 0
    plans: list[WorkPlan] = field(default_factory=list)
    _denoise_started: float | None = None
    _denoise_units: int = 0
    _per_step: int = 0
    _steps: int = 0
    _unit_area: float = 0.0
    _next_eta: int = 1

    def begin(self, plan: WorkPlan, what: str = "SSP-IR") -> None:
        """Count a plan's units in and log it (before its work starts)."""
        self.plans.append(plan)
        self.total += plan.total
        self._per_step, self._steps = plan.per_step, plan.steps
        self._unit_area = plan.unit_area or self._unit_area
        log.info("%s: %s", what, plan.describe(_RATES.get(self.rate_key)))
        if self.on_progress is not None:
            self.on_progress(self.done, self.total)

    def interrupt(self) -> None:
        """A cancel point (inside the models' blocks): raises when the user cancelled."""
        if self.check is not None:
            self.check()

    def unit(self, stage: str) -> None:
        """One unit of ``stage`` starts: a cancel point, and one step of progress."""
        self.interrupt()
        now = time.perf_counter()
        if stage == "denoise":
            if self._denoise_started is None:
                self._denoise_started = now
            elif self._per_step and self._denoise_units % self._per_step == 0:
                self._report_speed(now)
            self._denoise_units += 1
        self.done += 1
        if self.on_progress is not None:
            self.on_progress(self.done, self.total)

    def _report_speed(self, now: float) -> None:
        """After step 1 and at each quarter of the steps: seconds per step and the time left, in the log."""
        step = self._denoise_units // self._per_step
        rate = (now - self._denoise_started) / self._denoise_units
        if self._unit_area:
            _RATES[self.rate_key] = Speed(rate / self._unit_area, self._unit_area)
        if step >= self._next_eta:
            left = rate * self._per_step * (self._steps - step)
            log.info(
                "SSP-IR: step %d/%d, %.1f s per step: about %s of denoising left",
                step,
                self._steps,
                rate * self._per_step,
                _duration(left),
            )
            self._next_eta = step + max(1, self._steps // 4)


@contextlib.contextmanager
def cancel_points(run: Run | None, *modules: nn.Module) -> Iterator[None]:
    """While inside, every block of ``modules`` (each child of an ``nn.ModuleList``: UNet, ControlNet and VAE
    blocks, resnets and transformer layers, CLIP encoder layers, Processor convs) calls ``run.interrupt()``
    before it runs, so Cancel acts within a block, not only between tiles. A no-op without a check."""
    if run is None or run.check is None:
        yield
        return
    from .compile_models import is_compiled

    handles = []
    try:
        for module in modules:
            if is_compiled(module):  # a hook would break the compiled graph: tiles still check
                continue
            for sub in module.modules():
                if isinstance(sub, nn.ModuleList):
                    handles += [child.register_forward_pre_hook(lambda *_: run.interrupt()) for child in sub]
        yield
    finally:
        for handle in handles:
            handle.remove()
