"""Colour fixes: properties that follow from their definitions, checked on synthetic images."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sspir_core.errors import InputError
from sspir_core.restore.color_fix import adain_color_fix, apply_color_fix, wavelet_color_fix


def smooth_image(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Low-frequency colour image in [0.2, 0.8]: random 4x4 grid upsampled bilinearly."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(b, 3, 4, 4, generator=g)
    return 0.2 + 0.6 * F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True)


def checkerboard(h: int, w: int, amp: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return (amp * (1 - 2 * ((yy + xx) % 2))).float().expand(1, 3, h, w)


def naive_wavelet_decomposition(x: torch.Tensor, levels: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Straightforward multi-level split with an explicit 3x3 dilated kernel: returns (high, low)."""
    k = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    k = k.expand(3, 1, 3, 3)
    high = torch.zeros_like(x)
    for i in range(levels):
        r = 2**i
        low = F.conv2d(F.pad(x, (r, r, r, r), mode="replicate"), k, dilation=r, groups=3)
        high = high + (x - low)
        x = low
    return high, x


def test_adain_matches_source_channel_statistics():
    g = torch.Generator().manual_seed(1)
    target = torch.rand(2, 3, 37, 53, generator=g) * 0.5 + 0.3
    source = torch.rand(2, 3, 20, 30, generator=g) ** 2  # different size and distribution
    out = adain_color_fix(target, source)
    assert out.shape == target.shape
    torch.testing.assert_close(out.mean(dim=(2, 3)), source.mean(dim=(2, 3)), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        out.std(dim=(2, 3), unbiased=False), source.std(dim=(2, 3), unbiased=False), atol=1e-4, rtol=1e-3
    )
    # and it is an affine map per channel: correlation with the target is kept
    z = (target - target.mean(dim=(2, 3), keepdim=True)) / target.std(dim=(2, 3), keepdim=True, unbiased=False)
    zo = (out - out.mean(dim=(2, 3), keepdim=True)) / out.std(dim=(2, 3), keepdim=True, unbiased=False)
    torch.testing.assert_close(zo, z, atol=1e-3, rtol=0)


def test_wavelet_removes_constant_colour_offset():
    source = torch.rand(1, 3, 45, 61, generator=torch.Generator().manual_seed(2))
    offset = torch.tensor([0.1, -0.05, 0.2]).view(1, 3, 1, 1)
    out = wavelet_color_fix(source + offset, source)
    torch.testing.assert_close(out, source, atol=1e-5, rtol=0)


def test_wavelet_keeps_high_frequency_detail():
    h, w = 96, 96
    source = smooth_image(1, h, w)
    checker = checkerboard(h, w, 0.1)
    shifted = source + torch.tensor([0.05, 0.0, -0.05]).view(1, 3, 1, 1)  # colour cast on the target
    out = wavelet_color_fix(shifted + checker, source)
    # the blur cancels a checkerboard exactly away from the border; border effects reach 1+2+4+8+16 = 31 px
    inner = (slice(None), slice(None), slice(32, -32), slice(32, -32))
    torch.testing.assert_close((out - source)[inner], checker[inner], atol=1e-5, rtol=0)
    # everywhere, the checkerboard dominates the difference (detail kept, cast removed)
    assert ((out - source) * checker).mean() > 0.9 * (checker * checker).mean()


def test_wavelet_equals_explicit_decomposition():
    g = torch.Generator().manual_seed(3)
    target = torch.rand(2, 3, 50, 41, generator=g)
    source = torch.rand(2, 3, 50, 41, generator=g)
    high_t, _ = naive_wavelet_decomposition(target)
    _, low_s = naive_wavelet_decomposition(source)
    torch.testing.assert_close(wavelet_color_fix(target, source), high_t + low_s, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (7, 5), (33, 1)])
def test_wavelet_works_on_tiny_and_odd_sizes(size):
    source = torch.rand(1, 3, *size)
    out = wavelet_color_fix(source + 0.1, source)
    torch.testing.assert_close(out, source, atol=1e-5, rtol=0)


def test_batch_one_source_is_shared():
    target = torch.rand(3, 3, 16, 16)
    source = torch.rand(1, 3, 16, 16)
    for fn in (wavelet_color_fix, adain_color_fix):
        out = fn(target, source)
        for i in range(3):
            torch.testing.assert_close(out[i : i + 1], fn(target[i : i + 1], source), atol=1e-6, rtol=0)


def test_apply_color_fix_dispatch_and_clamp():
    target = torch.rand(1, 3, 20, 20)
    source = torch.rand(1, 3, 20, 20)
    assert apply_color_fix(target, source, "none") is target
    out = apply_color_fix(target, source, "wavelet")
    torch.testing.assert_close(out, wavelet_color_fix(target, source).clamp(0, 1))
    out = apply_color_fix(target * 3 - 1, source, "AdaIN")
    assert out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(out, adain_color_fix(target * 3 - 1, source).clamp(0, 1))


def test_half_precision_keeps_dtype():
    target = torch.rand(1, 3, 24, 24).half()
    source = torch.rand(1, 3, 24, 24).half()
    assert apply_color_fix(target, source, "wavelet").dtype == torch.float16
    assert apply_color_fix(target, source, "adain").dtype == torch.float16


def test_errors():
    t = torch.rand(1, 3, 20, 20)
    with pytest.raises(InputError, match="unknown colour fix"):
        apply_color_fix(t, t, "lab")
    with pytest.raises(InputError, match="resize the LQ"):
        wavelet_color_fix(t, torch.rand(1, 3, 10, 10))
    with pytest.raises(InputError, match=r"\[B, C, H, W\]"):
        wavelet_color_fix(t[0], t[0])
    with pytest.raises(InputError, match="batch"):
        adain_color_fix(torch.rand(2, 3, 8, 8), torch.rand(3, 3, 8, 8))
