"""PSNR and SSIM on the BT.601 Y channel, as restoration papers report them (see ``color``).

PSNR is one line, written here so an identical pair gives ``inf`` as in BasicSR. SSIM comes from
torchmetrics: Gaussian window 11, sigma 1.5, K1 = 0.01, K2 = 0.03, averaged over the window positions that
fit inside the image (torchmetrics pads by reflection and crops the padded border off again), which is
the Wang et al. / BasicSR definition.
"""

from __future__ import annotations

import math

import torch

from .color import Y_PEAK, rgb_to_y


def crop_border(x: torch.Tensor, border: int) -> torch.Tensor:
    """Drop ``border`` pixels on each side (the usual SR convention for the scale factor)."""
    if border < 0:
        raise ValueError(f"--crop-border must be >= 0, got {border}")
    if border == 0:
        return x
    h, w = x.shape[-2:]
    if 2 * border >= min(h, w):
        raise ValueError(f"--crop-border {border} leaves nothing of a {w}x{h} image")
    return x[..., border:-border, border:-border]


def psnr_y(pred: torch.Tensor, gt: torch.Tensor, border: int = 0) -> float:
    """PSNR in dB between the Y channels of two ``[1, 3, H, W]`` RGB images in [0, 1]; ``inf`` if identical."""
    mse = (crop_border(rgb_to_y(pred), border) - crop_border(rgb_to_y(gt), border)).pow(2).mean().item()
    return math.inf if mse == 0 else 10.0 * math.log10(Y_PEAK**2 / mse)


def ssim_y(pred: torch.Tensor, gt: torch.Tensor, border: int = 0) -> float:
    """SSIM between the Y channels of two ``[1, 3, H, W]`` RGB images in [0, 1] (data range 255)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    y_pred, y_gt = crop_border(rgb_to_y(pred), border), crop_border(rgb_to_y(gt), border)
    if min(y_pred.shape[-2:]) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11 px after the border crop, got {tuple(y_pred.shape[-2:])}")
    value = structural_similarity_index_measure(y_pred, y_gt, gaussian_kernel=True, sigma=1.5, kernel_size=11,
                                                data_range=Y_PEAK, k1=0.01, k2=0.03)
    return float(value)
