"""Decode -> colour fix -> 8/16-bit output in row bands, never holding a float image of the whole size.

The plain tail (``tiled_vae_decode``, then ``apply_color_fix``, then quantising in the writer) holds two or
three float copies of the output at once; at 2048 px and more they outgrow the per-tile model activations
and memory stops being flat in the image size. Here the VAE tiles are decoded one row of tiles at a time:
Gaussian blending only mixes tiles of neighbouring rows, so once the next tile row starts, every pixel row
above it is final and is passed on, colour-fixed and quantised into the integer output.

- ``none``: quantise the rows as they come.
- ``wavelet`` is local (a 5-level a-trous blur: 31 px radius), so a rolling window of decoded rows with a
  31-row halo gives the whole-image result (up to float rounding in the convolutions).
- ``adain`` needs the output's global mean and std: pass 1 keeps the decoded rows as 16-bit integers
  (in the output buffer itself for 16-bit output) while summing their statistics in float64; pass 2 maps
  them. The only difference from the float path is that 16-bit rounding of the pre-fix image (at most
  0.5/65535 times the AdaIN gain), so results agree within one output step (LSB).

Blending order and arithmetic are those of :func:`sspir_core.restore.tiling.tiled_vae_decode` and
``RestorePipeline.vae_decode``, so the decoded rows are the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from ..errors import InputError
from .color_fix import COLOR_FIX_METHODS, WAVELET_LEVELS, wavelet_lowpass
from .tiling import DEFAULT_SIGMA_SCALE, Box, gaussian_weights, tile_grid

OUTPUT_DTYPES = {8: torch.uint8, 16: torch.uint16}
WAVELET_RADIUS = sum(2**i for i in range(WAVELET_LEVELS))  # 31 px: how far the low band reaches
ROWS_PER_CHUNK = 256  # rows per band of the AdaIN statistics and mapping (bounded temporaries)


def quantize(x: torch.Tensor, bits: int) -> torch.Tensor:
    """[0,1] floats to integers as the PNG writer does: clamp, scale, round half to even."""
    scale = 255.0 if bits == 8 else 65535.0
    return (x.clamp(0.0, 1.0) * scale).round_().to(OUTPUT_DTYPES[bits])


def _empty_output(b: int, c: int, h: int, w: int, bits: int, device: torch.device) -> torch.Tensor:
    """``[B,C,H,W]`` integer tensor laid out as ``[B,H,W,C]`` (what a PNG writer reads, without a copy)."""
    return torch.empty(b, h, w, c, dtype=OUTPUT_DTYPES[bits], device=device).permute(0, 3, 1, 2)


def stream_decoded_rows(
    decode_fn: Callable[[torch.Tensor], torch.Tensor],
    latents: torch.Tensor,
    tile_latent: int | None,
    overlap_latent: int,
    scale: int = 8,
    sigma_scale: float = DEFAULT_SIGMA_SCALE,
    on_tile: Callable[[], None] | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(row0, rows)``: final blended decoder output rows ``[B, C, n, W*scale]``, top to bottom.

    Same numbers as ``tiled_vae_decode`` (same boxes, weights and summation order; ``rows`` keep the
    decoder's dtype). ``tile_latent=None`` or one tile covering the latents: ``decode_fn(latents)``.
    Memory: one row of tiles (``tile_latent * scale`` pixel rows of the full width). ``on_tile()`` is called
    before each tile (see :mod:`sspir_core.restore.tiling`).
    """
    h, w = latents.shape[-2:]
    boxes = tile_grid(h, w, tile_latent, overlap_latent) if tile_latent is not None else [(0, h, 0, w)]
    if len(boxes) == 1:
        if on_tile is not None:
            on_tile()
        yield 0, decode_fn(latents)
        return
    rows: dict[int, list[Box]] = {}
    for box in boxes:
        rows.setdefault(box[0], []).append(box)
    acc = wsum = None
    top = 0  # first pixel row held in acc
    out_dtype = latents.dtype
    weights: dict[tuple[int, int], torch.Tensor] = {}
    for y0 in sorted(rows):
        py0, py1 = y0 * scale, rows[y0][0][1] * scale
        if acc is not None and py0 > top:  # rows above this tile row are final
            yield top, acc[..., : py0 - top, :].div(wsum[..., : py0 - top, :]).to(out_dtype)
        new_acc = new_w = None
        for box in rows[y0]:
            by0, by1, bx0, bx1 = box
            if on_tile is not None:
                on_tile()
            res = decode_fn(latents[..., by0:by1, bx0:bx1])
            if new_acc is None:
                out_dtype = res.dtype
                new_acc = torch.zeros(*res.shape[:2], py1 - py0, w * scale, device=res.device, dtype=torch.float32)
                new_w = torch.zeros(1, 1, py1 - py0, w * scale, device=res.device, dtype=torch.float32)
                if acc is not None:  # carry the rows the previous tile row shares with this one
                    keep = top + acc.shape[-2] - py0
                    if keep > 0:
                        new_acc[..., :keep, :] = acc[..., py0 - top :, :]
                        new_w[..., :keep, :] = wsum[..., py0 - top :, :]
                acc, wsum, top = new_acc, new_w, py0
            key = (by1 - by0, bx1 - bx0)
            if key not in weights:
                weights[key] = gaussian_weights(
                    key[0] * scale, key[1] * scale, sigma_scale=sigma_scale, device=res.device
                )
            wgt = weights[key]
            acc[..., :, bx0 * scale : bx1 * scale] += res.float() * wgt
            wsum[..., :, bx0 * scale : bx1 * scale] += wgt
    assert acc is not None and wsum is not None
    yield top, acc.div_(wsum).to(out_dtype)


def _cropped_rows(chunks: Iterator[tuple[int, torch.Tensor]], box: Box) -> Iterator[tuple[int, torch.Tensor]]:
    """Map decoder rows ([-1,1], any dtype) to [0,1] float32 as ``vae_decode`` does, cropped to ``box``."""
    y0, y1, x0, x1 = box
    for r0, rows in chunks:
        a, b = max(r0, y0), min(r0 + rows.shape[-2], y1)
        if a < b:
            part = rows[..., a - r0 : b - r0, x0:x1].float()  # rows are the stream's own temporaries
            yield a - y0, part.add_(1).div_(2).clamp_(0, 1)


def _wavelet_rows(
    chunks: Iterator[tuple[int, torch.Tensor]], source: torch.Tensor, height: int
) -> Iterator[tuple[int, torch.Tensor]]:
    """Wavelet colour fix on streamed rows: a rolling window with a ``WAVELET_RADIUS`` halo (exact)."""
    r = WAVELET_RADIUS
    window: torch.Tensor | None = None
    start = 0  # first row held in window
    done = 0  # rows already emitted
    for r0, rows in chunks:
        window = rows if window is None else torch.cat([window, rows], dim=-2)
        end = r0 + rows.shape[-2]
        ready = height if end >= height else end - r
        if ready <= done:
            continue
        lo, hi = max(0, done - r), min(height, ready + r)
        t = window[..., lo - start : hi - start, :]
        fixed = t + wavelet_lowpass(source[..., lo:hi, :].float() - t)
        yield done, fixed[..., done - lo : ready - lo, :]
        done = ready
        drop = max(0, done - r) - start
        if drop > 0:
            window, start = window[..., drop:, :], start + drop


def _add_moments(x: torch.Tensor, total: torch.Tensor, squares: torch.Tensor) -> None:
    """Add per-channel sums and sums of squares of ``x`` [B,C,h,w] in float64, a band of rows at a time.

    float64 keeps the one-pass variance exact to far below an output step; the bands keep the float64
    temporaries small whatever the image size.
    """
    for r0 in range(0, x.shape[-2], ROWS_PER_CHUNK):
        band = x[..., r0 : r0 + ROWS_PER_CHUNK, :].double()
        total += band.sum(dim=(2, 3))
        squares += band.square_().sum(dim=(2, 3))


def _mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and population std [B,C] (float64) of ``x`` without an image-sized temporary."""
    total = torch.zeros(x.shape[:2], dtype=torch.float64, device=x.device)
    squares = torch.zeros_like(total)
    _add_moments(x, total, squares)
    n = x.shape[-2] * x.shape[-1]
    mean = total / n
    return mean, (squares / n - mean.square()).clamp_min(0).sqrt()


def decode_to_integers(
    decode_fn: Callable[[torch.Tensor], torch.Tensor],
    latents: torch.Tensor,
    source: torch.Tensor,
    box: Box,
    color_fix: str,
    bits: int,
    tile_latent: int | None,
    overlap_latent: int,
    scale: int = 8,
    on_tile: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Decode ``latents``, crop to ``box``, colour-fix against ``source`` (the LQ crop) and quantise.

    Returns ``[B, 3, h, w]`` ``uint8`` or ``uint16`` (rows stored ``[B, h, w, 3]``), as the float path
    followed by the PNG writer would, within one output step (see the module note).
    """
    if bits not in OUTPUT_DTYPES:
        raise InputError(f"output bit depth must be 8 or 16, got {bits}")
    method = str(color_fix).strip().lower()
    if method not in COLOR_FIX_METHODS:
        raise InputError(f"unknown colour fix {color_fix!r}: choose one of {', '.join(COLOR_FIX_METHODS)}")
    y0, y1, x0, x1 = box
    h, w = y1 - y0, x1 - x0
    if tuple(source.shape[-2:]) != (h, w):
        raise InputError(f"colour fix source is {tuple(source.shape[-2:])}, the output crop is {(h, w)}")
    chunks = _cropped_rows(
        stream_decoded_rows(decode_fn, latents, tile_latent, overlap_latent, scale, on_tile=on_tile), box
    )
    b = latents.shape[0]
    out = _empty_output(b, 3, h, w, bits, latents.device)
    if method == "none":
        for r0, rows in chunks:
            out[..., r0 : r0 + rows.shape[-2], :] = quantize(rows, bits)
        return out
    if method == "wavelet":
        for r0, rows in _wavelet_rows(chunks, source, h):
            out[..., r0 : r0 + rows.shape[-2], :] = quantize(rows, bits)
        return out
    # adain, pass 1: keep the decoded rows as 16-bit integers and sum their statistics exactly
    pre = out if bits == 16 else _empty_output(b, 3, h, w, 16, latents.device)
    total = torch.zeros(b, 3, dtype=torch.float64, device=latents.device)
    squares = torch.zeros_like(total)
    for r0, rows in chunks:
        pre[..., r0 : r0 + rows.shape[-2], :] = quantize(rows, 16)
        _add_moments(rows, total, squares)
    n = h * w
    t_mean = total / n
    t_std = (squares / n - t_mean.square()).clamp_min(0).sqrt()
    s_mean, s_std = _mean_std(source)
    gain = (s_std / (t_std + 1e-5)).float()[..., None, None]
    shift = (s_mean - t_mean * s_std / (t_std + 1e-5)).float()[..., None, None]
    for r0 in range(0, h, ROWS_PER_CHUNK):  # pass 2: map the stored rows
        r1 = min(h, r0 + ROWS_PER_CHUNK)
        rows = pre[..., r0:r1, :].float().div_(65535.0)
        out[..., r0:r1, :] = quantize(rows.mul_(gain).add_(shift), bits)
    return out
