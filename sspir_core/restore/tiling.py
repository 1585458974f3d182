"""Overlapping tiles with Gaussian blending, for latents (denoiser) and for the VAE.

Large images do not fit the UNet/VAE in one piece. Running tiles independently and pasting them leaves
seams; instead every output pixel is the weighted average of all tiles covering it, with weights that fall
off towards a tile's edge (where a tile lacks context). Because the weights only average, a per-pixel
operation gives exactly the untiled result, and when one tile covers the input the callback's own output is
returned untouched. Nothing here knows about models: callers pass functions.

Boxes are ``(y0, y1, x0, x1)``, half-open, in the coordinates of the tensor being tiled. ``on_tile()``, when
given, is called before each tile (one call when one tile covers the input): progress, and a point where a
cancel check may raise.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..errors import InputError

Box = tuple[int, int, int, int]
OnTile = Callable[[], None] | None
TileFn = Callable[[torch.Tensor, Box], torch.Tensor]
"""``fn(tile, box) -> out``: ``tile = x[..., y0:y1, x0:x1]``; ``out`` must have the tile's height and width."""

DEFAULT_SIGMA_SCALE = 0.15
"""Gaussian sigma as a fraction of the tile side: weight ~0.004 at a tile's edge, 1 at its centre.

Wider (0.25: 0.14 at the edge) leaves a visible step where a tile's edge enters another tile's middle;
narrower (0.1) squeezes the hand-over into a few pixels. 0.15 gave the smallest second difference when
blending tiles that each add a different constant (the drift a seam comes from)."""
_MIN_WEIGHT = 1e-30


def _axis_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile starts along one axis: evenly spread, first at 0, last snapped to ``size - tile``.

    Even spreading keeps every neighbour overlap >= ``overlap`` and about equal (no sliver tiles).
    """
    if size <= tile:
        return [0]
    n = math.ceil((size - tile) / (tile - overlap)) + 1
    span = size - tile
    return [round(i * span / (n - 1)) for i in range(n)]


def tile_grid(height: int, width: int, tile: int | tuple[int, int], overlap: int | tuple[int, int]) -> list[Box]:
    """Boxes ``(y0, y1, x0, x1)`` covering a ``height x width`` grid, row-major.

    ``tile``/``overlap`` are one int or ``(tile_h, tile_w)``. Tiles are ``tile`` big (clipped to the image),
    neighbours overlap by at least ``overlap``; a single box when the image fits in one tile.
    """
    th, tw = (tile, tile) if isinstance(tile, int) else tile
    oh, ow = (overlap, overlap) if isinstance(overlap, int) else overlap
    if height < 1 or width < 1:
        raise InputError(f"cannot tile an empty {height}x{width} area")
    if th < 1 or tw < 1:
        raise InputError(f"tile size must be >= 1, got {(th, tw)}")
    if not (0 <= oh < th and 0 <= ow < tw):
        raise InputError(
            f"tile overlap must be >= 0 and smaller than the tile, got overlap {(oh, ow)} for tile {(th, tw)}"
        )
    th, tw = min(th, height), min(tw, width)
    ys = _axis_starts(height, th, min(oh, th - 1))
    xs = _axis_starts(width, tw, min(ow, tw - 1))
    return [(y, y + th, x, x + tw) for y in ys for x in xs]


def gaussian_weights(
    h: int,
    w: int,
    sigma_scale: float = DEFAULT_SIGMA_SCALE,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Separable 2-D Gaussian ``[h, w]``, 1 at the centre, strictly positive.

    Positive everywhere (floored at 1e-30 for extreme ``sigma_scale``) so the weight sum never vanishes and
    every pixel is defined, even under a tile edge. No larger floor: two floored tiles meeting would tie
    50/50 and then jump, which is a seam.
    """
    if sigma_scale <= 0:
        raise InputError(f"sigma_scale must be > 0, got {sigma_scale}")

    def axis(n: int) -> torch.Tensor:
        pos = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
        sigma = sigma_scale * n
        return torch.exp(-0.5 * (pos / sigma) ** 2)

    gy, gx = axis(h), axis(w)
    weights = gy[:, None] * gx[None, :]
    weights = (weights / weights.max()).clamp_min(_MIN_WEIGHT)
    return weights.to(device=device, dtype=dtype)


def _accumulate(
    boxes: list[Box],
    run: Callable[[Box], torch.Tensor],
    out_box: Callable[[Box], Box],
    out_hw: tuple[int, int],
    sigma_scale: float,
    on_tile: OnTile = None,
) -> torch.Tensor:
    """Weighted sum of ``run(box)`` pasted at ``out_box(box)``, divided by the weight sum (float32)."""
    acc: torch.Tensor | None = None
    wsum: torch.Tensor | None = None
    out_dtype = torch.float32
    cache: dict[tuple[int, int], torch.Tensor] = {}
    for box in boxes:
        y0, y1, x0, x1 = out_box(box)
        if on_tile is not None:
            on_tile()
        res = run(box)
        if res.ndim != 4 or tuple(res.shape[-2:]) != (y1 - y0, x1 - x0):
            raise ValueError(
                f"tile function returned shape {tuple(res.shape)} for box {box}; "
                f"expected spatial size {(y1 - y0, x1 - x0)}"
            )
        if acc is None:
            out_dtype = res.dtype
            acc = torch.zeros(*res.shape[:2], *out_hw, device=res.device, dtype=torch.float32)
            wsum = torch.zeros(1, 1, *out_hw, device=res.device, dtype=torch.float32)
        key = (y1 - y0, x1 - x0)
        if key not in cache:
            cache[key] = gaussian_weights(*key, sigma_scale=sigma_scale, device=res.device)
        weight = cache[key]
        acc[..., y0:y1, x0:x1] += res.float() * weight
        wsum[..., y0:y1, x0:x1] += weight
    assert acc is not None and wsum is not None
    return acc.div_(wsum).to(out_dtype)  # in place: one image-sized buffer less at the peak


def _once(on_tile: OnTile) -> None:
    if on_tile is not None:
        on_tile()


def _check_4d(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise InputError(f"{what} must be a [B, C, H, W] tensor, got {getattr(x, 'shape', type(x))}")


def blend_tiles(
    fn: TileFn,
    x: torch.Tensor,
    tile: int | tuple[int, int],
    overlap: int | tuple[int, int],
    sigma_scale: float = DEFAULT_SIGMA_SCALE,
    on_tile: OnTile = None,
) -> torch.Tensor:
    """Run ``fn(tile, box)`` over overlapping tiles of ``x`` ``[B, C, H, W]`` and blend with Gaussian weights.

    ``fn`` must return ``[B, C', h, w]`` for a tile of height ``h`` and width ``w`` (same spatial size;
    channels may change). The box lets ``fn`` slice matching conditioning (e.g. the LQ image at 8x).
    With one tile the result is ``fn(x, (0, H, 0, W))`` itself.
    """
    _check_4d(x, "blend_tiles input")
    h, w = x.shape[-2:]
    boxes = tile_grid(h, w, tile, overlap)
    if len(boxes) == 1:
        _once(on_tile)
        return fn(x, boxes[0])
    return _accumulate(
        boxes, lambda b: fn(x[..., b[0] : b[1], b[2] : b[3]], b), lambda b: b, (h, w), sigma_scale, on_tile
    )


def tiled_vae_decode(
    decode_fn: Callable[[torch.Tensor], torch.Tensor],
    latents: torch.Tensor,
    tile_latent: int = 64,
    overlap_latent: int = 16,
    scale: int = 8,
    sigma_scale: float = DEFAULT_SIGMA_SCALE,
    on_tile: OnTile = None,
) -> torch.Tensor:
    """Decode ``latents`` ``[B, C, h, w]`` tile by tile into ``[B, C', h*scale, w*scale]``, blended in pixel space.

    ``decode_fn(latent_tile) -> image_tile`` with ``scale`` times the tile's height and width.
    One tile covering the latents returns ``decode_fn(latents)`` itself.
    """
    _check_4d(latents, "latents")
    h, w = latents.shape[-2:]
    boxes = tile_grid(h, w, tile_latent, overlap_latent)
    if len(boxes) == 1:
        _once(on_tile)
        return decode_fn(latents)

    def pixel_box(b: Box) -> Box:
        return (b[0] * scale, b[1] * scale, b[2] * scale, b[3] * scale)

    return _accumulate(
        boxes,
        lambda b: decode_fn(latents[..., b[0] : b[1], b[2] : b[3]]),
        pixel_box,
        (h * scale, w * scale),
        sigma_scale,
        on_tile,
    )


def vae_encode_boxes(hp: int, wp: int, tile_px: int, overlap_px: int, scale: int = 8) -> list[Box]:
    """The latent boxes :func:`tiled_vae_encode` encodes for an ``hp x wp`` px image (sizes rounded down to
    multiples of ``scale``, the overlap kept below the tile)."""
    tile_l = tile_px // scale
    return tile_grid(hp // scale, wp // scale, tile_l, min(overlap_px // scale, tile_l - 1))


def tiled_vae_encode(
    encode_fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    tile_px: int = 512,
    overlap_px: int = 64,
    scale: int = 8,
    sigma_scale: float = DEFAULT_SIGMA_SCALE,
    on_tile: OnTile = None,
) -> torch.Tensor:
    """Encode ``image`` ``[B, C, H, W]`` (H, W multiples of ``scale``) tile by tile, blended in latent space.

    Tiles are laid on the latent grid so each pixel tile maps to whole latent pixels; ``tile_px`` and
    ``overlap_px`` are rounded down to multiples of ``scale``. ``encode_fn(image_tile) -> latent_tile`` with
    1/``scale`` of the tile's size. Blend distribution parameters (mean, or mean and log-variance as
    channels) and sample once afterwards: blending per-tile samples would shrink the noise in overlaps.
    One tile covering the image returns ``encode_fn(image)`` itself.
    """
    _check_4d(image, "image")
    hp, wp = image.shape[-2:]
    if hp % scale or wp % scale:
        raise InputError(f"tiled VAE encode needs height and width divisible by {scale}, got {hp}x{wp}; pad first")
    if tile_px < scale:
        raise InputError(f"tile_px must be at least {scale}, got {tile_px}")
    h, w = hp // scale, wp // scale
    boxes = vae_encode_boxes(hp, wp, tile_px, overlap_px, scale)
    if len(boxes) == 1:
        _once(on_tile)
        return encode_fn(image)
    return _accumulate(
        boxes,
        lambda b: encode_fn(image[..., b[0] * scale : b[1] * scale, b[2] * scale : b[3] * scale]),
        lambda b: b,
        (h, w),
        sigma_scale,
        on_tile,
    )
