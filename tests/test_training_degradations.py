"""Real-ESRGAN second-order degradation: parameter ranges and frequencies (SSPIR-METHOD.md), kernels, determinism."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from sspir_core.training.degradations import (
    DegradationSettings,
    apply_degradation,
    degrade,
    gaussian_kernel,
    gaussian_noise,
    poisson_noise,
    sample_degradation,
    sinc_kernel,
    usm_sharpen,
)

pytestmark = pytest.mark.usefixtures("one_thread")


N = 400  # draws for the frequency checks

# zyhrainbow/SSP-IR basicsr/data/realesrgan_dataset.py, RealESRGANDataset.__init__:
#   self.kernel_range = [2 * v + 1 for v in range(3, 11)]  # kernel size ranges from 7 to 21
# and __getitem__ draws `kernel_size = random.choice(self.kernel_range)` for the first kernel, the second kernel
# and the final sinc alike (the `blur_kernel_size2: 11` option of utils_data/make_paired_data.py is never read).
OFFICIAL_KERNEL_SIZES = (7, 9, 11, 13, 15, 17, 19, 21)
# same file, both kernels: `omega_c = np.random.uniform(np.pi / 3, np.pi)` if kernel_size < 13,
# else `np.random.uniform(np.pi / 5, np.pi)`
OFFICIAL_SINC_SMALL, OFFICIAL_SINC_LARGE, OFFICIAL_SINC_SPLIT = (math.pi / 3, math.pi), (math.pi / 5, math.pi), 13


@pytest.fixture(scope="module")
def draws():
    return [sample_degradation(seed) for seed in range(N)]


def _freq_ok(count: int, p: float, n: int = N) -> bool:
    """Within 5 binomial standard deviations of the expected count."""
    return abs(count - n * p) <= 5 * math.sqrt(n * p * (1 - p)) + 1


def test_stage_ranges_match_the_method_note(draws):
    for d in draws:
        for stage, sigma_hi, (lo, hi), noise_hi, poisson_hi in (
            (d.stage1, 3.0, (0.15, 1.5), 30.0, 3.0),
            (d.stage2, 1.5, (0.3, 1.2), 25.0, 2.5),
        ):
            if stage.kernel is not None:
                assert stage.kernel.shape == (21, 21)
                assert stage.kernel.sum().item() == pytest.approx(1.0, abs=1e-9)
                assert stage.kernel_size in OFFICIAL_KERNEL_SIZES
                if stage.sigma is not None:
                    assert all(0.2 <= s <= sigma_hi for s in stage.sigma)
                if stage.kernel_type.startswith("generalized"):
                    assert 0.5 <= stage.beta <= 4.0
                if stage.kernel_type.startswith("plateau"):
                    assert 1.0 <= stage.beta <= 2.0
            assert lo <= stage.resize_scale <= hi
            assert {"up": stage.resize_scale >= 1, "down": stage.resize_scale <= 1, "keep": stage.resize_scale == 1}[
                stage.resize_kind
            ]
            assert stage.resize_mode in ("area", "bilinear", "bicubic")
            if stage.noise == "gaussian":
                assert 1.0 <= stage.noise_level <= noise_hi
            else:
                assert 0.05 <= stage.noise_level <= poisson_hi
            assert 30 <= stage.jpeg_quality <= 95
        assert 30 <= d.final_jpeg_quality <= 95
        assert d.final_kernel.sum().item() == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_kernel_sizes_and_sinc_cutoffs_are_the_official_ones(draws, stage):
    """Both orders draw every odd size 7..21 uniformly; the sinc cutoff follows the official size rule."""
    sizes = [getattr(d, stage).kernel_size for d in draws if getattr(d, stage).kernel is not None]
    assert set(sizes) == set(OFFICIAL_KERNEL_SIZES)  # stage 2 drew only 7..11 before
    for size in OFFICIAL_KERNEL_SIZES:
        assert _freq_ok(sizes.count(size), 1 / len(OFFICIAL_KERNEL_SIZES), len(sizes))
    # sinc only (probability 1) to see enough of them; sizes and the cutoff rule are what is checked
    only_sinc = replace(getattr(DegradationSettings(), stage), blur_prob=1.0, sinc_prob=1.0)
    settings = replace(DegradationSettings(), **{stage: only_sinc})
    sincs = [getattr(sample_degradation(seed, settings), stage) for seed in range(N)]
    assert all(s.kernel_type == "sinc" for s in sincs)
    for s in sincs:
        lo, hi = OFFICIAL_SINC_SMALL if s.kernel_size < OFFICIAL_SINC_SPLIT else OFFICIAL_SINC_LARGE
        assert lo <= s.cutoff <= hi
        assert torch.allclose(
            s.kernel, torch.nn.functional.pad(sinc_kernel(s.cutoff, s.kernel_size), [(21 - s.kernel_size) // 2] * 4)
        )
    large = [s.cutoff for s in sincs if s.kernel_size >= OFFICIAL_SINC_SPLIT]
    # the stronger low-pass (cutoff below pi/3) exists only for the large kernels: 1/6 of their draws
    assert _freq_ok(
        sum(c < math.pi / 3 for c in large), (math.pi / 3 - math.pi / 5) / (math.pi - math.pi / 5), len(large)
    )


def test_probabilities_match_the_method_note(draws):
    s1 = [d.stage1 for d in draws]
    s2 = [d.stage2 for d in draws]
    assert all(s.kernel is not None for s in s1)  # stage 1 always blurs
    assert _freq_ok(sum(s.kernel is not None for s in s2), 0.8)
    assert _freq_ok(sum(s.kernel_type == "sinc" for s in s1), 0.1)
    assert _freq_ok(sum(s.resize_kind == "up" for s in s1), 0.2)
    assert _freq_ok(sum(s.resize_kind == "down" for s in s1), 0.7)
    assert _freq_ok(sum(s.resize_kind == "down" for s in s2), 0.4)
    assert _freq_ok(sum(s.noise == "gaussian" for s in s1 + s2), 0.5, 2 * N)
    assert _freq_ok(sum(s.gray_noise for s in s1), 0.4)
    assert _freq_ok(sum(d.final_sinc for d in draws), 0.8)
    non_sinc = [s.kernel_type for s in s1 if s.kernel_type != "sinc"]
    assert _freq_ok(non_sinc.count("iso"), 0.45, len(non_sinc))
    assert _freq_ok(non_sinc.count("aniso"), 0.25, len(non_sinc))


def test_gaussian_kernel_is_the_separable_gaussian():
    size, sigma = 9, 1.7
    ax = torch.arange(size, dtype=torch.float64) - 4
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    expected = torch.outer(g, g) / torch.outer(g, g).sum()
    assert torch.allclose(gaussian_kernel(size, sigma, sigma, 0.3), expected, atol=1e-12)  # rotation: no effect
    # anisotropic, theta = pi/2 swaps the axes
    a = gaussian_kernel(size, 2.0, 0.5, 0.0)
    b = gaussian_kernel(size, 2.0, 0.5, math.pi / 2)
    assert torch.allclose(a, b.T, atol=1e-12)


def test_sinc_kernel_against_scipy_bessel():
    scipy_special = pytest.importorskip("scipy.special")
    size, cutoff = 13, 1.9
    ax = torch.arange(size, dtype=torch.float64) - 6
    r = torch.sqrt(ax[:, None] ** 2 + ax[None, :] ** 2).numpy()
    with torch.no_grad(), __import__("numpy").errstate(divide="ignore", invalid="ignore"):
        k = cutoff * scipy_special.j1(cutoff * r) / (2 * math.pi * r + (r == 0))
    k[6, 6] = cutoff**2 / (4 * math.pi)
    expected = torch.from_numpy(k / k.sum())
    assert torch.allclose(sinc_kernel(cutoff, size), expected, atol=1e-10)


def test_deterministic_per_seed_and_shapes():
    gt = torch.rand(3, 64, 48, generator=torch.Generator().manual_seed(1))
    a, b, c = degrade(gt, 7), degrade(gt, 7), degrade(gt, 8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == gt.shape and a.min() >= 0 and a.max() <= 1
    lq = apply_degradation(gt, sample_degradation(7))
    assert lq.shape == (3, 16, 12)
    assert torch.equal(lq * 255, (lq * 255).round())  # stored as 8-bit values, as the official PNG pairs


def test_noise_levels():
    g = torch.Generator().manual_seed(0)
    img = torch.full((3, 128, 128), 0.5)
    noisy = gaussian_noise(img, 20.0, gray=False, g=g)
    assert (noisy - img).std().item() == pytest.approx(20 / 255, rel=0.05)
    gray = gaussian_noise(img, 20.0, gray=True, g=g)
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    # Poisson: 256 distinct values -> 256 levels; at x = 0.5 the noise std is sqrt(0.5 * 256) / 256 (x scale)
    img = torch.full((3, 130, 128), 128 / 255)
    img[:, 0, :] = torch.arange(128) / 255
    img[:, 1, :] = torch.arange(128, 256) / 255
    for scale in (1.0, 2.0):
        p = poisson_noise(img, scale, gray=False, g=g)
        assert (p - img)[:, 2:].std().item() == pytest.approx(scale * math.sqrt(128 / 255 * 256) / 256, rel=0.05)


def test_usm_keeps_flat_areas_and_sharpens_edges():
    flat = torch.full((3, 64, 64), 0.4)
    assert torch.allclose(usm_sharpen(flat), flat, atol=1e-6)
    edge = torch.zeros(3, 64, 64)
    edge[:, :, 32:] = 0.6
    sharp = usm_sharpen(edge)
    assert sharp[:, :, 33].mean() > 0.6  # overshoot on the bright side
    assert sharp[:, :, 30].mean() == pytest.approx(0.0, abs=1e-6)  # clipped at 0 on the dark side


def test_jpeg_is_the_real_codec():
    """Same bytes as Pillow's libjpeg at the same quality (Real-ESRGAN's DiffJPEG only approximates it)."""
    import io

    import numpy as np
    from PIL import Image

    from sspir_core.training.degradations import jpeg

    x = torch.rand(3, 24, 40, generator=torch.Generator().manual_seed(3))
    u8 = (x * 255).round().to(torch.uint8)
    buf = io.BytesIO()
    Image.fromarray(u8.permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=40)
    expected = torch.from_numpy(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")).copy())
    assert torch.equal((jpeg(x, 40) * 255).round().to(torch.uint8), expected.permute(2, 0, 1))
