"""Helpers for scripts/min_deps_check.sh (standard library only).

``floors``: print ``name==version`` for the light dependencies' declared floors in pyproject.toml, so the
check installs exactly what pyproject promises (one source of truth).
``seed-torch SITE``: give the venv whose site-packages is SITE this interpreter's torch and torchvision (and
what they need) as hard links: a fresh torch + CUDA install costs minutes and the check is about the other
floors. Hard links, not symlinks: pip in the other venv may remove a file without touching this one's.
Prints a constraints file's lines pinning what was linked, so pip never swaps them.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from importlib import metadata
from pathlib import Path

LIGHT = ("diffusers", "transformers", "accelerate", "open_clip_torch", "safetensors")
ROOT = Path(__file__).resolve().parents[1]


def floors() -> list[str]:
    text = (ROOT / "pyproject.toml").read_text()  # (tomllib is 3.11+; the dependency lines are plain strings)
    deps = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
    out = []
    for name in LIGHT:
        floor = re.search(rf'^\s*"{re.escape(name)}\s*>=\s*([\w.]+)', deps, re.M)
        if floor is None:
            sys.exit(f"pyproject.toml declares no floor (>=) for {name}")
        out.append(f"{name}=={floor.group(1)}")
    return out


def _closure(names: list[str]) -> dict[str, metadata.Distribution]:
    """The installed distributions ``names`` need (requirement markers evaluated loosely: extras skipped)."""
    seen: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = re.split(r"[\s<>=!;\[(~]", todo.pop(), maxsplit=1)[0].lower().replace("_", "-")
        if not name or name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional or platform-specific requirement that is not installed
        seen[name] = dist
        todo += [r for r in (dist.requires or []) if "extra ==" not in r]
    return seen


def seed_torch(site: Path) -> list[str]:
    pins = []
    for name, dist in _closure(["torch", "torchvision"]).items():
        base = Path(dist.locate_file(""))
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in sorted(tops):
            src, dst = base / top, site / top
            if dst.exists() or not src.exists():
                continue
            if src.is_dir():
                shutil.copytree(src, dst, copy_function=os.link, symlinks=True)
            else:
                os.link(src, dst)
        pins.append(f"{name}=={dist.version}")
    return pins


if __name__ == "__main__":
    if sys.argv[1:2] == ["floors"]:
        print(" ".join(floors()))
    elif sys.argv[1:2] == ["seed-torch"] and len(sys.argv) == 3:
        print("\n".join(seed_torch(Path(sys.argv[2]))))
    else:
        sys.exit("usage: min_deps.py floors | seed-torch SITE_PACKAGES")
