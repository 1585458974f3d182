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
    failed: dict[str, dict[str, str]] = field(default_factory=dict)
    """``{image: {"file": path, "error": message}}``: pairs with a file that cannot be read; not in ``images``,
    not in any mean. The other pairs are scored (one broken file must not cost the whole run)."""

    def infinite(self) -> dict[str, list[str]]:
        """``{metric: [image, ...]}`` whose value is +inf (PSNR of an image identical to its GT)."""
        out: dict[str, list[str]] = {}
        for name, row in self.images.items():
            for metric, value in row.items():
                if value == math.inf:
                    out.setdefault(metric, []).append(name)
        return out

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
        """The ``--json`` document (strict JSON, which has no inf).

        A value is a number, or the string ``"Infinity"`` for PSNR of an image identical to its GT (Python's
        ``float()`` and JavaScript's ``Number()`` both read it back as infinity). ``null`` means one thing
        only: a mean over no scored image. An image a metric did not score has no key for it in its row and an
        entry in ``not_scored`` (or the whole pair in ``failed``).
        """

        def value(v: float) -> float | str:
            return v if math.isfinite(v) else ("Infinity" if v > 0 else "-Infinity" if v < 0 else "NaN")

        mean = {k: None if math.isnan(v) else value(v) for k, v in self.mean.items()}
        return {
            "images": {n: {k: value(v) for k, v in r.items()} for n, r in self.images.items()},
            "mean": mean,
            "infinite": self.infinite(),
            "failed": self.failed,
            "skipped": self.skipped,
            "not_scored": self.not_scored,
            "not_scored_summary": self.not_scored_summary(),
            "missing": self.missing,
            "in_subfolders": self.in_subfolders,
            "protocol": self.protocol,
            "crop_border": self.crop_border,
        }


class _UnreadableFile(InputError):
    """One image file cannot be read; ``path`` says which of the pair it was."""

    def __init__(self, path: Path, message: str) -> None:
        self.path = path
        super().__init__(message)


def image_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` from the file header, after EXIF rotation (as ``load_image`` applies it)."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            if img.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
                w, h = h, w
    except OSError as exc:
        raise _UnreadableFile(path, f"{path}: cannot read image ({exc})") from exc
    return h, w


def _load(path: Path) -> torch.Tensor:
    try:
        return load_image(path).rgb
    except InputError as exc:
        raise _UnreadableFile(path, str(exc)) from exc


def check_pair_sizes(pairing: Pairing, protocol: Protocol) -> tuple[dict[str, tuple[int, int]], dict[str, dict]]:
    """Every size problem in the set at once, before any scoring starts (raised as one :class:`InputError`).

    Returns ``({image: (H, W) of the scored region}, {image: {"file": ..., "error": ...}})``: a file whose
    header cannot be read fails that pair alone.
    """
    problems, scored, failed = [], {}, {}
    for pair in pairing.pairs:
        try:
            pred_hw = image_size(pair.pred)
            gt_hw = image_size(pair.gt)
        except _UnreadableFile as exc:
            failed[pair.name] = {"file": str(exc.path), "error": str(exc)}
            continue
        try:
            protocol.check_sizes(pred_hw, gt_hw, pair.name)
        except InputError as exc:
            problems.append(str(exc))
            continue
        scored[pair.name] = protocol.gt_box(*gt_hw, f"GT {pair.name}")[2:]
    if problems:
        raise InputError(f"{len(problems)} pair(s) cannot be compared:\n  " + "\n  ".join(problems))
    return scored, failed


def check_crop_border(sizes: dict[str, tuple[int, int]], crop_border: int) -> None:
    """Refuse a ``--crop-border`` that leaves nothing of any image, before scoring: a run that scores nothing
    must not look like a result. (One that leaves nothing of some images only skips them, see ``not_scored``.)"""
    if crop_border <= 0 or not sizes:
        return
    if any(2 * crop_border < min(hw) for hw in sizes.values()):
        return
    small = min(sizes, key=lambda n: (min(sizes[n]), n))
    large = max(sizes, key=lambda n: (min(sizes[n]), n))
    (sh, sw), (lh, lw) = sizes[small], sizes[large]
    head = f"--crop-border {crop_border} leaves nothing to score: it drops {crop_border} px on each side, and "
    if min(sh, sw) == min(lh, lw):
        raise InputError(
            head + f"the smallest image is {sw}x{sh} px ({small}); use --crop-border {(min(sh, sw) - 1) // 2} or less"
        )
    raise InputError(
        head + f"the smallest image is {sw}x{sh} px ({small}), the largest {lw}x{lh} px ({large}); "
        f"--crop-border {(min(lh, lw) - 1) // 2} or less leaves something of the largest, "
        f"{(min(sh, sw) - 1) // 2} or less of every image"
    )


def _mean(values: Sequence[float]) -> float:
    """Mean over the finite values; +inf (an image identical to its GT) is left out and counted in
    :meth:`EvalResult.infinite`, since one such image would make the mean inf. All inf: inf; none: NaN."""
    finite = [v for v in values if math.isfinite(v)]
    if finite:
        return math.fsum(finite) / len(finite)
    return math.inf if values and all(v == math.inf for v in values) else math.nan


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
    crop) is listed in ``not_scored`` instead of ending the run, and a pair with a file that cannot be read
    (header or pixel data) in ``failed``. A ``crop_border`` that leaves nothing of any image raises
    :class:`InputError` before scoring.
    """
    protocol = protocol or Protocol()
    sizes, failed = check_pair_sizes(pairing, protocol)
    if "psnr_y" in metrics or "ssim_y" in metrics:
        check_crop_border(sizes, crop_border)
    device = torch.device(device)
    scorers, skipped = build_scorers(metrics, weights, device)
    images: dict[str, dict[str, float]] = {}
    not_scored: dict[str, dict[str, dict[str, str]]] = {}
    set_metrics = [n for n in scorers if METRICS[n].kind == "set"]
    with tempfile.TemporaryDirectory(prefix="sspir-eval-") as scratch:
        for index, pair in enumerate(pairing.pairs):
            if pair.name in failed:
                continue
            try:  # the header was fine; the pixel data may still be cut off
                pred, gt = protocol.crop_pair(_load(pair.pred), _load(pair.gt), pair.name)
            except _UnreadableFile as exc:
                failed[pair.name] = {"file": str(exc.path), "error": str(exc)}
                continue
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
        set_values = {
            n: scorers[n](Path(scratch) / "pred", Path(scratch) / "gt") if images else math.nan for n in set_metrics
        }
    columns = [m for m in scorers if METRICS[m].kind != "set"] + ([TIME_COLUMN] if timings else [])
    mean = {c: _mean([r[c] for r in images.values() if c in r]) for c in columns}
    mean.update(set_values)
    failed = {p.name: failed[p.name] for p in pairing.pairs if p.name in failed}  # in pairing order
    return EvalResult(
        images,
        mean,
        skipped,
        dict(pairing.missing),
        protocol.name,
        crop_border,
        not_scored,
        dict(pairing.in_subfolders),
        failed,
    )
