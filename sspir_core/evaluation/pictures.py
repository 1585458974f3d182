"""Pictures for looking, not just counting: LQ | restored | GT crops of the best and worst images, and the
per-image distribution of each metric.

Drawn with Pillow (already a dependency) rather than matplotlib, so evaluation adds no plotting stack.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from ..image_io import load_image
from .metrics import METRICS
from .pairing import Pair
from .protocol import Protocol
from .runner import EvalResult

CROP = 256
LABEL_H = 18
BG = (255, 255, 255)
INK = (0, 0, 0)


def _to_pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray((x[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def _centre(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    s_h, s_w = min(size, h), min(size, w)
    top, left = (h - s_h) // 2, (w - s_w) // 2
    return x[..., top : top + s_h, left : left + s_w]


def rank(result: EvalResult, metric: str) -> tuple[str, str]:
    """``(best, worst)`` image names by ``metric`` (direction from the registry)."""
    values = {n: r[metric] for n, r in result.images.items() if metric in r and not math.isnan(r[metric])}
    if not values:
        raise ValueError(f"--rank-by {metric}: no per-image values (ran: {', '.join(result.columns) or 'none'})")
    order = sorted(values, key=values.get, reverse=METRICS[metric].higher_better)
    return order[0], order[-1]


def side_by_side(pair: Pair, protocol: Protocol, title: str, crop: int = CROP) -> Image.Image:
    """LQ (nearest-upscaled to the GT grid, so its pixels stay visible) | restored | GT, same centre crop."""
    pred, gt = protocol.crop_pair(load_image(pair.pred).rgb, load_image(pair.gt).rgb, pair.name)
    panels = [("restored", pred), ("GT", gt)]
    if pair.lq is not None:
        lq = protocol.crop_lq(load_image(pair.lq).rgb, f"LQ {pair.name}")
        panels.insert(0, ("LQ", F.interpolate(lq, size=tuple(gt.shape[-2:]), mode="nearest")))
    tiles = [(label, _to_pil(_centre(x, crop))) for label, x in panels]
    w, h = tiles[0][1].size
    canvas = Image.new("RGB", (len(tiles) * w + (len(tiles) - 1) * 4, h + 2 * LABEL_H), BG)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    draw.text((2, 2), title, fill=INK, font=font)
    for i, (label, tile) in enumerate(tiles):
        x = i * (w + 4)
        draw.text((x + 2, LABEL_H + 2), label, fill=INK, font=font)
        canvas.paste(tile, (x, 2 * LABEL_H))
    return canvas


def distribution(result: EvalResult, width: int = 480, row_h: int = 44) -> Image.Image:
    """One strip per metric: every image as a tick on the metric's own min..max axis, the mean in red."""
    cols = [c for c in result.columns if any(c in r for r in result.images.values())]
    canvas = Image.new("RGB", (width, max(1, len(cols)) * row_h + 8), BG)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    left, right = 90, width - 60
    for i, col in enumerate(cols):
        y = 4 + i * row_h
        values = [r[col] for r in result.images.values() if col in r and math.isfinite(r[col])]
        draw.text((4, y + 14), col, fill=INK, font=font)
        if not values:
            draw.text((left, y + 14), "no finite values", fill=INK, font=font)
            continue
        lo, hi = min(values), max(values)
        span = (hi - lo) or 1.0
        axis_y = y + 22
        draw.line((left, axis_y, right, axis_y), fill=(160, 160, 160))
        for v in values:
            x = left + (v - lo) / span * (right - left)
            draw.line((x, axis_y - 8, x, axis_y + 8), fill=(40, 80, 200), width=2)
        mean = sum(values) / len(values)
        x = left + (mean - lo) / span * (right - left)
        draw.line((x, axis_y - 12, x, axis_y + 12), fill=(220, 30, 30), width=2)
        draw.text((left, axis_y + 10), f"{lo:.4g}", fill=INK, font=font)
        draw.text((right - 10, axis_y + 10), f"{hi:.4g}", fill=INK, font=font)
    return canvas


def write_pictures(result: EvalResult, pairs: list[Pair], protocol: Protocol, metric: str, out_dir: Path) -> list[Path]:
    """``best_<metric>.png``, ``worst_<metric>.png`` and ``distribution.png`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    by_name = {p.name: p for p in pairs}
    written = []
    for which, name in zip(("best", "worst"), rank(result, metric)):
        value = result.images[name][metric]
        path = out_dir / f"{which}_{metric}.png"
        side_by_side(by_name[name], protocol, f"{which} by {metric}: {name} ({metric} = {value:.4g})").save(path)
        written.append(path)
    path = out_dir / "distribution.png"
    distribution(result).save(path)
    return [*written, path]
