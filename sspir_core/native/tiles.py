"""Latent tiles of the native route's model call: other ControlNets' residuals cut to a tile.

ComfyUI computes another ControlNet's residuals on the whole latent before the model call; when Apply SSP-IR
runs that call tile by tile, each residual is cut to the part of it under the tile.
"""

from __future__ import annotations

from ..errors import InputError

Box = tuple[int, int, int, int]


def _level_factor(size: tuple[int, int], part: tuple[int, int]) -> int | None:
    """The power of two ``f`` with ``ceil(size / f) == part`` on both axes (the UNet halves with ceil)."""
    f = 1
    while f <= max(size):
        if all(-(-s // f) == p for s, p in zip(size, part)):
            return f
        f *= 2
    return None


def crop_control(control: dict | None, box: Box, size: tuple[int, int]) -> dict | None:
    """Another ControlNet's residuals (made by ComfyUI on the whole latent) cut to one latent tile.

    Each residual sits at a UNet level that halves ``size`` (with ceil) some times; its crop starts at the
    tile's start at that level and has the size the UNet's own halvings give the tile, shifted inside the
    residual where a tile at the edge would run past it.
    """
    if not control:
        return control
    y0, y1, x0, x1 = box
    out: dict = {}
    for key, parts in control.items():
        if not isinstance(parts, list | tuple):
            out[key] = parts
            continue
        cut = []
        for t in parts:
            if t is None:
                cut.append(None)
                continue
            f = _level_factor(size, tuple(t.shape[-2:])) if t.ndim == 4 else None
            if f is None:
                raise InputError(
                    f"another ControlNet's {key} residual of shape {tuple(t.shape)} does not match the "
                    f"{size[1]}x{size[0]} latent, so it cannot be cut into Apply SSP-IR's latent tiles: "
                    "set Apply SSP-IR's tile to 0 (no tiling)"
                )
            hh, ww = -(-(y1 - y0) // f), -(-(x1 - x0) // f)
            top, left = min(y0 // f, t.shape[-2] - hh), min(x0 // f, t.shape[-1] - ww)
            cut.append(t[..., top : top + hh, left : left + ww])
        out[key] = cut
    return out
