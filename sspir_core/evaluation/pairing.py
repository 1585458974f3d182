"""Pair restored images with their ground truth (and optional LQ) by file stem.

Restorers write ``<stem>.png`` whatever the input format, so pairing is by stem, not by full name. With
``recursive`` the name is the path relative to the folder without its suffix (``city/a``), so a GT tree
pairs with a restored tree of the same layout. Images without a partner are reported, never silently
dropped, and so are images in subfolders that a flat pairing does not look at.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
FOLDER_FLAGS = {"gt": "--gt", "pred": "--pred", "lq": "--lq"}


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
    in_subfolders: dict[str, dict[str, int]] = field(default_factory=dict)
    """Without ``recursive``: ``{"gt": {"city": 12, ...}, ...}``, images in subfolders that were not paired."""
    folders: dict[str, str] = field(default_factory=dict)
    """``{"gt": folder, ...}`` as given, for messages."""

    def describe_missing(self) -> list[str]:
        what = {"gt": "no ground truth", "pred": "no restored image", "lq": "no LQ image"}
        return [
            f"{len(v)} image(s) with {what[k]}: {', '.join(v[:10])}{' ...' if len(v) > 10 else ''}"
            for k, v in self.missing.items()
            if v
        ]

    def describe_subfolders(self) -> list[str]:
        """One line per folder whose subfolders hold images that were not paired, saying how to pair them."""
        lines = []
        for key, subs in self.in_subfolders.items():
            where = ", ".join(f"{s}/ ({n})" for s, n in list(subs.items())[:10]) + (" ..." if len(subs) > 10 else "")
            lines.append(
                f"{FOLDER_FLAGS[key]}: {sum(subs.values())} image(s) in subfolders of "
                f"{self.folders.get(key, key)} are not paired: {where}; pass --recursive to pair "
                "them by relative path"
            )
        return lines


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def _walk(folder: Path) -> list[Path]:
    """Every image under ``folder``, sorted (symlinked folders are not followed, so a loop cannot hang it)."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found += [Path(root) / f for f in sorted(files) if _is_image(Path(root) / f)]
    return found


def subfolder_images(folder: str | Path) -> dict[str, int]:
    """``{subfolder (relative, posix): number of images directly in it}`` for every subfolder with images."""
    folder = Path(folder)
    counts: dict[str, int] = {}
    for path in _walk(folder):
        if path.parent != folder:
            sub = path.parent.relative_to(folder).as_posix()
            counts[sub] = counts.get(sub, 0) + 1
    return counts


def list_images(folder: str | Path, flag: str, recursive: bool = False) -> dict[str, Path]:
    """``{name: path}`` of the images in ``folder`` (name: the stem, or with ``recursive`` the relative path
    without suffix); two images with one name (a.png and a.jpg) are an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{flag}: folder not found: {folder}")
    found: dict[str, Path] = {}
    paths = _walk(folder) if recursive else [p for p in sorted(folder.iterdir()) if _is_image(p)]
    for path in paths:
        name = path.relative_to(folder).with_suffix("").as_posix()
        if name in found:
            raise InputError(
                f"{flag}: two images share the name {name!r} in {folder} "
                f"({found[name].relative_to(folder)}, {path.relative_to(folder)}); pairing is by "
                "name, so keep one"
            )
        found[name] = path
    return found


def pair_images(
    pred_dir: str | Path, gt_dir: str | Path, lq_dir: str | Path | None = None, recursive: bool = False
) -> Pairing:
    """Pair ``pred_dir`` and ``gt_dir`` (and ``lq_dir``) by name; raises when no pair at all is found.

    Without ``recursive`` only the folders' own images are paired and those in their subfolders are
    counted in :attr:`Pairing.in_subfolders`; with it, names are relative paths (``city/a``).
    """
    folders = {"pred": pred_dir, "gt": gt_dir} | ({"lq": lq_dir} if lq_dir is not None else {})
    found = {k: list_images(v, FOLDER_FLAGS[k], recursive) for k, v in folders.items()}
    preds, gts, lqs = found["pred"], found["gt"], found.get("lq")
    names = sorted(preds.keys() & gts.keys())
    missing = {"gt": sorted(preds.keys() - gts.keys()), "pred": sorted(gts.keys() - preds.keys())}
    if lqs is not None:
        missing["lq"] = [n for n in names if n not in lqs]
    nested = {} if recursive else {k: subs for k, v in folders.items() if (subs := subfolder_images(v))}
    if not names:
        hint = (
            " (their subfolders hold images: pass --recursive to pair by relative path)"
            if "pred" in nested or "gt" in nested
            else ""
        )
        raise InputError(
            f"no image in --pred {pred_dir} has a partner with the same name in --gt {gt_dir} "
            f"({len(preds)} restored, {len(gts)} ground-truth images){hint}"
        )
    pairs = [Pair(n, preds[n], gts[n], lqs.get(n) if lqs is not None else None) for n in names]
    return Pairing(pairs, {k: v for k, v in missing.items() if v}, nested, {k: str(v) for k, v in folders.items()})
