"""Tables of an :class:`EvalResult`: Markdown (for READMEs), CSV (for spreadsheets), JSON (for scripts)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from .metrics import METRICS
from .runner import TIME_COLUMN, EvalResult

DIGITS = {"psnr_y": 2, "niqe": 3, "musiq": 2, "fid": 2, TIME_COLUMN: 2}
"""Decimals shown in the Markdown table; 4 for everything else. CSV and JSON keep full precision."""


def _fmt(column: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if math.isinf(value):
        return "inf"
    return f"{value:.{DIGITS.get(column, 4)}f}"


def _header(column: str) -> str:
    spec = METRICS.get(column)
    return column if spec is None else f"{column} {'↑' if spec.higher_better else '↓'}"


def markdown(result: EvalResult) -> str:
    """Per-image rows, then a bold mean row; set metrics (FID) appear in the mean row only."""
    cols = result.columns
    lines = ["| image | " + " | ".join(_header(c) for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, row in result.images.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(c, row.get(c)) for c in cols) + " |")
    lines.append(
        "| **mean** | "
        + " | ".join(f"**{_fmt(c, result.mean[c])}**" if _fmt(c, result.mean.get(c)) else "" for c in cols)
        + " |"
    )  # no empty bold (****) for a NaN mean
    notes = [
        f"- skipped `{n}`: {info['reason']}; needs " + ", ".join(f"`{f}`" for f in info["needs"])
        for n, info in result.skipped.items()
    ]
    for metric, info in result.not_scored_summary().items():
        scored = info["of"] - info["images"]
        notes += [
            f"- `{metric}` not scored for {len(images)} of {info['of']} image(s), {reason}: {', '.join(images)} "
            f"(its mean is over the other {scored})"
            for reason, images in info["reasons"].items()
        ]
    for metric, names in result.infinite().items():
        finite = sum(metric in r for r in result.images.values()) - len(names)
        mean = f"its mean is over the other {finite}" if finite else "so is its mean"
        notes.append(
            f"- `{metric}` is infinite (identical to GT) for {len(names)} image(s): {', '.join(names)} ({mean})"
        )
    notes += [f"- not scored, cannot be read: `{n}`: {why['error']}" for n, why in result.failed.items()]
    notes += [f"- missing partner: {len(v)} image(s) without {k}: {', '.join(v)}" for k, v in result.missing.items()]
    notes += [
        f"- not paired: {sum(subs.values())} image(s) in subfolders of --{k} ({', '.join(subs)}); "
        "`--recursive` pairs them"
        for k, subs in result.in_subfolders.items()
    ]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def csv_text(result: EvalResult) -> str:
    """One row per image plus a ``mean`` row; empty cells where a metric has no per-image value."""
    cols = result.columns
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image", *cols])
    for name, row in result.images.items():
        writer.writerow([name, *(repr(row[c]) if c in row else "" for c in cols)])
    writer.writerow(["mean", *(repr(result.mean[c]) if c in result.mean else "" for c in cols)])
    return buf.getvalue()


def write_json(result: EvalResult, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result.to_json(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
