"""Tiling: exact cover, exactness for one tile and for per-pixel functions, and no visible seams."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sspir_core.errors import InputError
from sspir_core.restore.tiling import (
    blend_tiles,
    gaussian_weights,
    tile_grid,
    tiled_vae_decode,
    tiled_vae_encode,
)

GRID_CASES = [
    (1, 1, 64, 16),
    (64, 64, 64, 16),
    (65, 64, 64, 16),
    (100, 300, 64, 16),
    (513, 777, 96, 32),
    (200, 130, 50, 0),
    (37, 250, 40, 39),
]


@pytest.mark.parametrize("h, w, tile, overlap", GRID_CASES)
def test_grid_covers_exactly_within_bounds(h, w, tile, overlap):
    boxes = tile_grid(h, w, tile, overlap)
    count = torch.zeros(h, w, dtype=torch.int32)
    for y0, y1, x0, x1 in boxes:
        assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w
        assert (y1 - y0, x1 - x0) == (min(tile, h), min(tile, w))
        count[y0:y1, x0:x1] += 1
    assert count.min() >= 1
    ys = sorted({b[0] for b in boxes})
    xs = sorted({b[2] for b in boxes})
    assert ys[0] == 0 and xs[0] == 0
    assert ys[-1] + min(tile, h) == h and xs[-1] + min(tile, w) == w  # last tile snapped to the border
    # neighbours overlap by at least the requested amount, with the fewest tiles that allow it
    for starts, size in ((ys, h), (xs, w)):
        t = min(tile, size)
        for a, b in zip(starts, starts[1:], strict=False):
            assert t - (b - a) >= overlap
        expected_n = 1 if size <= tile else math.ceil((size - tile) / (tile - overlap)) + 1
        assert len(starts) == expected_n
    assert len(boxes) == len(ys) * len(xs)


def test_one_tile_when_image_fits():
    assert tile_grid(48, 64, 64, 16) == [(0, 48, 0, 64)]
    assert tile_grid(64, 64, 64, 16) == [(0, 64, 0, 64)]


def test_rectangular_tile_and_bad_args():
    boxes = tile_grid(100, 100, (50, 100), (10, 0))
    assert {(b[1] - b[0], b[3] - b[2]) for b in boxes} == {(50, 100)}
    assert len(boxes) == 3
    with pytest.raises(InputError, match="overlap"):
        tile_grid(100, 100, 32, 32)
    with pytest.raises(InputError, match="empty"):
        tile_grid(0, 10, 32, 8)


@pytest.mark.parametrize("h, w", [(9, 9), (8, 13), (64, 64), (1, 5)])
def test_gaussian_weights(h, w):
    g = gaussian_weights(h, w)
    assert g.shape == (h, w) and g.dtype == torch.float32
    assert g.min() > 0
    assert g.max() == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(g, g.flip(0))
    torch.testing.assert_close(g, g.flip(1))
    # separable: rank one
    gy, gx = g[:, w // 2], g[h // 2, :]
    torch.testing.assert_close(g, gy[:, None] * gx[None, :] / g[h // 2, w // 2])
    if h % 2 and w % 2:
        assert g[h // 2, w // 2] == pytest.approx(1.0, abs=1e-6)
    # decreases away from the centre
    assert torch.all(g[h // 2, w // 2 :].diff() <= 0)
    # sigma = sigma_scale * side: one sigma (10 px) from the centre of a 41-px axis the weight is exp(-1/2)
    g2 = gaussian_weights(1, 41, sigma_scale=10 / 41)
    assert g2[0, 20 + 10].item() == pytest.approx(math.exp(-0.5), rel=1e-5)
    assert g2[0, 20 - 20].item() == pytest.approx(math.exp(-2.0), rel=1e-5)


def test_blend_one_tile_is_fn_exactly():
    x = torch.rand(2, 4, 40, 56)
    calls = []

    def fn(t, box):
        calls.append(box)
        return torch.sin(t * 3.7) / 3.1 + 0.1234567

    out = blend_tiles(fn, x, 64, 16)
    assert calls == [(0, 40, 0, 56)]
    assert torch.equal(out, torch.sin(x * 3.7) / 3.1 + 0.1234567)


@pytest.mark.parametrize("tile, overlap", [(16, 4), (24, 8), (17, 0), (33, 32)])
def test_blend_of_pointwise_fn_equals_input(tile, overlap):
    x = torch.rand(2, 4, 50, 70)
    seen = []

    def fn(t, box):
        y0, y1, x0, x1 = box
        assert torch.equal(t, x[..., y0:y1, x0:x1])
        seen.append(box)
        return torch.cat([t, t * t], dim=1)  # channels may change

    out = blend_tiles(fn, x, tile, overlap)
    assert len(seen) > 1
    # float32 sums of up to ~700 weighted copies: a few ulps of rounding, far below any visible seam
    torch.testing.assert_close(out, torch.cat([x, x * x], dim=1), atol=1e-5, rtol=1e-5)


def test_blend_keeps_fn_dtype():
    x = torch.rand(1, 4, 40, 40)
    out = blend_tiles(lambda t, b: t.half(), x, 16, 4)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), x, atol=1e-3, rtol=0)


def avg3_zero(t, box=None):
    return F.avg_pool2d(t, 3, stride=1, padding=1, count_include_pad=True)


def avg3_replicate(t, box=None):
    return F.avg_pool2d(F.pad(t, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


def interior_edge_mask(h: int, w: int, boxes) -> torch.Tensor:
    """Pixels on an edge row/column of some tile where that edge is not an image border."""
    mask = torch.zeros(h, w, dtype=torch.bool)
    for y0, y1, x0, x1 in boxes:
        if y0 > 0:
            mask[y0, x0:x1] = True
        if y1 < h:
            mask[y1 - 1, x0:x1] = True
        if x0 > 0:
            mask[y0:y1, x0] = True
        if x1 < w:
            mask[y0:y1, x1 - 1] = True
    return mask


def test_convolution_differs_only_at_tile_edges_and_bounded():
    h, w, tile, overlap = 60, 90, 32, 8
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    tiled = blend_tiles(avg3_zero, x, tile, overlap)
    diff = (tiled - avg3_zero(x)).abs()[0].amax(0)
    mask = interior_edge_mask(h, w, tile_grid(h, w, tile, overlap))
    assert diff[~mask].max() < 1e-6  # identical wherever every covering tile saw the full 3x3 window
    assert diff[mask].max() > 1e-3  # tiling does change the edge pixels (the test can see it)
    assert diff[mask].max() <= 5 / 9 + 1e-6  # at most 5 of 9 zero-padded neighbours, values in [0, 1]


def seam_excess(out: torch.Tensor, boxes, width: int) -> float:
    """Largest |d2/dx2| in the seam zones (overlaps and +-2 px around interior tile edges) minus the largest
    elsewhere (image borders excluded)."""
    d2 = (out[..., 2:] - 2 * out[..., 1:-1] + out[..., :-2]).abs().amax(dim=(0, 1, 2))  # column j -> x = j + 1
    zone = torch.zeros(width, dtype=torch.bool)
    starts = sorted({b[2] for b in boxes})
    ends = sorted({b[3] for b in boxes})
    for x0 in starts[1:]:
        zone[max(x0 - 2, 0) : x0 + 3] = True
    for x1 in ends[:-1]:
        zone[max(x1 - 3, 0) : x1 + 2] = True
    for x0, x1 in zip(starts[1:], ends[:-1], strict=True):
        zone[x0:x1] = True  # the overlap itself
    zone = zone[1:-1]
    valid = torch.zeros_like(zone)
    valid[2:-2] = True  # ignore the image's own borders
    return (d2[zone & valid].max() - d2[~zone & valid].max()).item()


H, W, TILE = 24, 192, 64  # W = 3 tiles exactly: with overlap 0 the tiles butt against each other
RAMP = torch.linspace(0.1, 0.9, W).expand(1, 3, H, W).contiguous()
VISIBLE = 1 / 512  # half an 8-bit level


def per_tile_offset(overlap: int):
    """A fn that adds 0.02 x (tile column index): what a tile-dependent model drift looks like."""
    starts = sorted({b[2] for b in tile_grid(H, W, TILE, overlap)})
    return lambda t, box: t + 0.02 * starts.index(box[2])


def test_seam_check_fails_for_hard_tiles_with_per_tile_offset():
    boxes = tile_grid(H, W, TILE, 0)
    assert [b[2] for b in boxes] == [0, 64, 128]
    out = blend_tiles(per_tile_offset(0), RAMP, TILE, 0)
    assert seam_excess(out, boxes, W) > 5 * VISIBLE


def test_gaussian_blending_spreads_a_per_tile_offset():
    hard = seam_excess(blend_tiles(per_tile_offset(0), RAMP, TILE, 0), tile_grid(H, W, TILE, 0), W)
    soft = seam_excess(blend_tiles(per_tile_offset(32), RAMP, TILE, 32), tile_grid(H, W, TILE, 32), W)
    assert soft < hard / 5


@pytest.mark.parametrize("overlap", [16, 24])
def test_no_visible_seam_for_same_everywhere_fn(overlap):
    boxes = tile_grid(H, W, TILE, overlap)
    assert len(boxes) > 1
    out = blend_tiles(avg3_replicate, RAMP, TILE, overlap)
    assert seam_excess(out, boxes, W) < VISIBLE
    # the untiled result has no seam by construction; tiled stays within the same bound of it
    assert (out - avg3_replicate(RAMP)).abs().max() < VISIBLE


def upsample8(z):
    return F.interpolate(z, scale_factor=8, mode="nearest") * 0.5 + 0.25


def test_tiled_vae_decode_matches_untiled():
    z = torch.randn(1, 4, 24, 36, generator=torch.Generator().manual_seed(1))
    calls = []

    def dec(t):
        calls.append(tuple(t.shape))
        return upsample8(t)

    out = tiled_vae_decode(dec, z, tile_latent=16, overlap_latent=4)
    assert len(calls) > 1 and out.shape == (1, 4, 192, 288)
    torch.testing.assert_close(out, upsample8(z), atol=1e-6, rtol=1e-6)


def test_tiled_vae_one_tile_is_exact_call():
    z = torch.randn(1, 4, 16, 24)
    calls = []

    def dec(t):
        calls.append(1)
        return torch.sin(upsample8(t) * 1.3)

    assert torch.equal(tiled_vae_decode(dec, z, tile_latent=64), torch.sin(upsample8(z) * 1.3))
    img = torch.rand(1, 3, 64, 96)
    assert torch.equal(
        tiled_vae_encode(lambda t: F.avg_pool2d(t, 8) * 1.7, img, tile_px=512), F.avg_pool2d(img, 8) * 1.7
    )
    assert len(calls) == 1


def test_tiled_vae_encode_matches_untiled():
    img = torch.rand(2, 3, 200, 136, generator=torch.Generator().manual_seed(2))
    boxes = []

    def enc(t):
        boxes.append(tuple(t.shape[-2:]))
        return torch.cat([F.avg_pool2d(t, 8), -F.avg_pool2d(t, 8)], dim=1)  # "mean and logvar" channels

    out = tiled_vae_encode(enc, img, tile_px=100, overlap_px=20)  # rounded down to 96 / 16 px
    assert len(boxes) > 1 and set(boxes) == {(96, 96)}
    torch.testing.assert_close(out, enc(img), atol=1e-6, rtol=1e-6)


def test_tiled_vae_errors():
    with pytest.raises(InputError, match="divisible by 8"):
        tiled_vae_encode(lambda t: t, torch.rand(1, 3, 60, 65), tile_px=32)
    with pytest.raises(ValueError, match="expected spatial size"):
        tiled_vae_decode(lambda t: t, torch.rand(1, 4, 40, 40), tile_latent=16, overlap_latent=4)
    with pytest.raises(InputError, match=r"\[B, C, H, W\]"):
        blend_tiles(lambda t, b: t, torch.rand(3, 40, 40), 16, 4)
