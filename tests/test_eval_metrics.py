"""PSNR/SSIM on BT.601 Y against hand computations and scikit-image, on real photos from scikit-image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sspir_core.evaluation.color import rgb_to_y
from sspir_core.evaluation.fidelity import psnr_y, ssim_y

skdata = pytest.importorskip("skimage.data", reason="scikit-image is in the test extra")
skmetrics = pytest.importorskip("skimage.metrics")


def tensor(u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(u8.astype(np.float32) / 255.0).permute(2, 0, 1)[None]


def y_by_hand(u8: np.ndarray) -> np.ndarray:
    """BT.601 studio-swing luma on the 0..255 scale: 16 + (65.481 R + 128.553 G + 24.966 B) / 255."""
    r, g, b = (u8[..., i].astype(np.float64) for i in range(3))
    return 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0


def test_y_channel_of_known_colours():
    px = np.array(
        [[[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128]]], dtype=np.uint8
    )
    y = rgb_to_y(tensor(px))[0, 0, 0].numpy()
    expected = [235.0, 16.0, 16 + 65.481, 16 + 128.553, 16 + 24.966, 16 + 219 * 128 / 255]
    np.testing.assert_allclose(y, expected, atol=1e-9)


def test_y_channel_of_a_photo_matches_the_formula():
    photo = skdata.astronaut()[::8, ::8]
    np.testing.assert_allclose(rgb_to_y(tensor(photo))[0, 0].numpy(), y_by_hand(photo), atol=1e-4)


def test_psnr_of_a_known_noise_level():
    """+-k grey-level noise on every channel moves Y by exactly k * 219/255, so MSE = (k * 219/255)^2."""
    gt = np.clip(skdata.astronaut(), 10, 245).astype(np.int16)
    k = 6
    sign = np.random.default_rng(0).choice([-1, 1], size=gt.shape[:2])[..., None]
    noisy = (gt + k * sign).astype(np.uint8)
    expected = 10 * math.log10(255**2 / (k * 219 / 255) ** 2)
    assert psnr_y(tensor(noisy), tensor(gt.astype(np.uint8))) == pytest.approx(expected, abs=1e-4)


def test_psnr_agrees_with_scikit_image_on_the_y_channel():
    gt = skdata.coffee()
    noisy = np.clip(gt + np.random.default_rng(1).normal(0, 12, gt.shape), 0, 255).astype(np.uint8)
    expected = skmetrics.peak_signal_noise_ratio(y_by_hand(gt), y_by_hand(noisy), data_range=255)
    assert psnr_y(tensor(noisy), tensor(gt)) == pytest.approx(expected, abs=1e-3)


def test_ssim_of_identical_images_is_one_and_psnr_infinite():
    gt = tensor(skdata.chelsea())
    assert ssim_y(gt, gt.clone()) == pytest.approx(1.0, abs=1e-6)
    assert psnr_y(gt, gt.clone()) == math.inf


def test_ssim_agrees_with_scikit_image_gaussian_ssim():
    """scikit-image's Wang et al. SSIM (Gaussian window sigma 1.5, population covariances) on Y."""
    gt = skdata.coffee()[100:260, 200:380]
    noisy = np.clip(gt + np.random.default_rng(2).normal(0, 15, gt.shape), 0, 255).astype(np.uint8)
    expected = skmetrics.structural_similarity(
        y_by_hand(gt), y_by_hand(noisy), data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert 0.2 < expected < 0.95
    assert ssim_y(tensor(noisy), tensor(gt)) == pytest.approx(expected, abs=1e-6)


def test_crop_border_ignores_the_border():
    gt = skdata.astronaut()[:64, :64]
    pred = gt.copy()
    pred[:3] = 0  # damage only the top 3 rows
    assert psnr_y(tensor(pred), tensor(gt)) < 30
    assert psnr_y(tensor(pred), tensor(gt), border=3) == math.inf
    assert ssim_y(tensor(pred), tensor(gt), border=3) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="crop-border"):
        psnr_y(tensor(pred), tensor(gt), border=32)
