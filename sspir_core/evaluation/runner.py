"""Score paired images: per-image values, the mean, set-level metrics, and what was skipped."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from ..errors import InputError
from ..image_io import load_image, save_png
from .fidelity import NotScorable
from .metrics import METRICS
from .pairing import Pairing
from .protocol import Protocol
from .registry import build_scorers
from .weights import WeightsConfig

TIME_COLUMN = "time_s"
_EXIF_ORIENTATION = 0x0112


@dataclass
class EvalResult:
    images: dict[str, dict[str, float]]
    mean: dict[str, float]
    skipped: dict[str, dict[str, object]]
    missing: dict[str, list[str]] = field(default_factory=dict)
    protocol: str = "none"
    crop_border: int = 0
    not_scored: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)
    """``{image: {metric: {"reason": ..., "detail": ...}}}``: metrics that could not score that image (too
    small); the rest of its row and the other images are scored, and the metric's mean is over the images
    it scored."""
    in_subfolders: dict[str, dict[str, int]] = field(default_factory=dict)
    """Images in subfolders that were not paired (without ``recursive``): ``{"gt": {subfolder: count}}``."""

    def not_scored_summary(self) -> dict[str, dict[str, object]]:
        """``{metric: {"images": n, "of": total, "reasons": {reason: [image, ...]}}}`` for the report."""
        summary: dict[str, dict[str, object]] = {}
        for image, metrics in self.not_scored.items():
            for metric, why in metrics.items():
                entry = summary.setdefault(metric, {"images": 0, "of": len(self.images), "reasons": {}})
                entry["images"] += 1
                entry["reasons"].setdefault(why["reason"], []).append(image)
        return {m: summary[m] for m in METRICS if m in summary}

    @property
    def columns(self) -> list[str]:
        """Metric columns in registry order, then the timing column when there is one."""
        seen = {k for row in self.images.values() for k in row} | set(self.mean)
        cols = [m for m in METRICS if m in seen]
        return cols + ([TIME_COLUMN] if TIME_COLUMN in seen else [])

    def to_json(self) -> dict[str, object]:
        """The ``--json`` document; inf/NaN (PSNR of identical images) become null, as JSON has no inf."""
        def clean(d: dict[str, float]) -> dict[str, float | None]:
            return {k: (v if math.isfinite(v) else None) for k, v in d.items()}
        return {"images": {n: clean(r) for n, r in self.images.items()}, "mean": clean(self.mean),
                "skipped": self.skipped, "not_scored": self.not_scored,
                "not_scored_summary": self.not_scored_summary(), "missing": self.missing,
                "in_subfolders": self.in_subfolders, "protocol": self.protocol, "crop_border": self.crop_border}


def image_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` from the file header, after EXIF rotation (as ``load_image`` applies it)."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            if img.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
                w, h = h, w
    except OSError as exc:
        raise InputError(f"{path}: cannot read image ({exc})") from exc
    return h, w


def check_pair_sizes(pairing: Pairing, protocol: Protocol) -> None:
    """Every size problem in the set at once, before any scoring starts."""
    problems = []
    for pair in pairing.pairs:
        try:
            protocol.check_sizes(image_size(pair.pred), image_size(pair.gt), pair.name)
        except InputError as exc:
            problems.append(str(exc))
    if problems:
        raise InputError(f"{len(problems)} pair(s) cannot be compared:\n  " + "\n  ".join(problems))


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else math.nan


def evaluate(
    pairing: Pairing,
    metrics: Sequence[str],
    weights: WeightsConfig,
    device: torch.device | str = "cpu",
    crop_border: int = 0,
    protocol: Protocol | None = None,
    timings: dict[str, float] | None = None,
) -> EvalResult:
    """Score every pair with every metric that can run; the others are listed in ``skipped``.

    ``crop_border`` applies to PSNR/SSIM only (the SR convention); ``timings`` (seconds per image name)
    become the ``time_s`` column. An image a metric cannot score (too small for SSIM's window or the border
    crop) is listed in ``not_scored`` instead of ending the run.
    """
    protocol = protocol or Protocol()
    check_pair_sizes(pairing, protocol)
    device = torch.device(device)
    scorers, skipped = build_scorers(metrics, weights, device)
    images: dict[str, dict[str, float]] = {}
    not_scored: dict[str, dict[str, dict[str, str]]] = {}
    set_metrics = [n for n in scorers if METRICS[n].kind == "set"]
    with tempfile.TemporaryDirectory(prefix="sspir-eval-") as scratch:
        for index, pair in enumerate(pairing.pairs):
            pred, gt = protocol.crop_pair(load_image(pair.pred).rgb, load_image(pair.gt).rgb, pair.name)
            row: dict[str, float] = {}
            for name, score in scorers.items():
                kind = METRICS[name].kind
                if kind == "set":
                    continue
                try:
                    if name in ("psnr_y", "ssim_y"):
                        row[name] = score(pred, gt, crop_border)
                    else:
                        row[name] = score(pred) if kind == "nr" else score(pred, gt)
                except NotScorable as exc:
                    not_scored.setdefault(pair.name, {})[name] = {"reason": exc.reason, "detail": exc.detail}
            if timings is not None and pair.name in timings:
                row[TIME_COLUMN] = timings[pair.name]
            images[pair.name] = row
            if set_metrics:  # set metrics read one flat folder each: give them exactly the scored regions
                save_png(pred, Path(scratch) / "pred" / f"{index:06d}.png")  # names may hold subfolders
                save_png(gt, Path(scratch) / "gt" / f"{index:06d}.png")
        set_values = {n: scorers[n](Path(scratch) / "pred", Path(scratch) / "gt") for n in set_metrics}
    columns = [m for m in scorers if METRICS[m].kind != "set"] + ([TIME_COLUMN] if timings else [])
    mean = {c: _mean([r[c] for r in images.values() if c in r]) for c in columns}
    mean.update(set_values)
    return EvalResult(images, mean, skipped, dict(pairing.missing), protocol.name, crop_border, not_scored,
                      dict(pairing.in_subfolders))
