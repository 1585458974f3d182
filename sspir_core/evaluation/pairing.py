"""Pair restored images with their ground truth (and optional LQ) by file stem.

Restorers write ``<stem>.png`` whatever the input format, so pairing is by stem, not by full name.
Images without a partner are reported, never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Pair:
    name: str
    pred: Path
    gt: Path
    lq: Path | None = None


@dataclass
class Pairing:
    pairs: list[Pair]
    missing: dict[str, list[str]] = field(default_factory=dict)
    """``{"gt": [stems with a prediction but no GT], "pred": [...], "lq": [...]}``; empty lists are omitted."""

    def describe_missing(self) -> list[str]:
        what = {"gt": "no ground truth", "pred": "no restored image", "lq": "no LQ image"}
        return [f"{len(v)} image(s) with {what[k]}: {', '.join(v[:10])}{' ...' if len(v) > 10 else ''}"
                for k, v in self.missing.items() if v]


def list_images(folder: str | Path, flag: str) -> dict[str, Path]:
    """``{stem: path}`` of the images in ``folder``; duplicate stems (a.png and a.jpg) are an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{flag}: folder not found: {folder}")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        if path.stem in found:
            raise InputError(f"{flag}: two images share the name {path.stem!r} in {folder} "
                             f"({found[path.stem].name}, {path.name}); pairing is by name, so keep one")
        found[path.stem] = path
    return found


def pair_images(pred_dir: str | Path, gt_dir: str | Path, lq_dir: str | Path | None = None) -> Pairing:
    """Pair ``pred_dir`` and ``gt_dir`` (and ``lq_dir``) by stem; raises when no pair at all is found."""
    preds, gts = list_images(pred_dir, "--pred"), list_images(gt_dir, "--gt")
    lqs = list_images(lq_dir, "--lq") if lq_dir is not None else None
    names = sorted(preds.keys() & gts.keys())
    missing = {"gt": sorted(preds.keys() - gts.keys()), "pred": sorted(gts.keys() - preds.keys())}
    if lqs is not None:
        missing["lq"] = [n for n in names if n not in lqs]
    if not names:
        raise InputError(f"no image in --pred {pred_dir} has a partner with the same name in --gt {gt_dir} "
                         f"({len(preds)} restored, {len(gts)} ground-truth images)")
    pairs = [Pair(n, preds[n], gts[n], lqs.get(n) if lqs is not None else None) for n in names]
    return Pairing(pairs, {k: v for k, v in missing.items() if v})
