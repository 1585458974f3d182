"""PSNR and SSIM on the BT.601 Y channel, as restoration papers report them (see ``color``).

Both are written here, in float64, because the library versions differ from the protocol in ways that
move published numbers: torchmetrics' SSIM averages over the whole image after reflection padding, whereas
Wang et al.'s definition (BasicSR, MATLAB ``ssim``, scikit-image) averages only the positions where the
11x11 Gaussian window (sigma 1.5) fits inside the image. PSNR of an identical pair is ``inf``, as in BasicSR.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import InputError
from .color import Y_PEAK, rgb_to_y

SSIM_WINDOW, SSIM_SIGMA = 11, 1.5


class NotScorable(InputError):
    """One image cannot be scored by one metric (it is too small); the run scores everything else.

    ``reason`` is the same for every image that fails the same way (the report counts images per reason);
    the message adds this image's size.
    """

    def __init__(self, reason: str, detail: str) -> None:
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason} ({detail})")


def crop_border(x: torch.Tensor, border: int) -> torch.Tensor:
    """Drop ``border`` pixels on each side (the usual SR convention for the scale factor)."""
    if border < 0:
        raise ValueError(f"--crop-border must be >= 0, got {border}")
    if border == 0:
        return x
    h, w = x.shape[-2:]
    if 2 * border >= min(h, w):
        raise NotScorable(f"--crop-border {border} leaves nothing of the image", f"{w}x{h} px")
    return x[..., border:-border, border:-border]


def psnr_y(pred: torch.Tensor, gt: torch.Tensor, border: int = 0) -> float:
    """PSNR in dB between the Y channels of two ``[1, 3, H, W]`` RGB images in [0, 1]; ``inf`` if identical."""
    mse = (crop_border(rgb_to_y(pred), border) - crop_border(rgb_to_y(gt), border)).pow(2).mean().item()
    return math.inf if mse == 0 else 10.0 * math.log10(Y_PEAK**2 / mse)


def _gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, size, size)


def ssim_y(pred: torch.Tensor, gt: torch.Tensor, border: int = 0) -> float:
    """SSIM between the Y channels of two ``[1, 3, H, W]`` RGB images in [0, 1] (data range 255)."""
    x, y = crop_border(rgb_to_y(pred), border), crop_border(rgb_to_y(gt), border)
    if min(x.shape[-2:]) < SSIM_WINDOW:
        h, w = x.shape[-2:]
        raise NotScorable(
            f"smaller than SSIM's {SSIM_WINDOW}x{SSIM_WINDOW} window after the border crop",
            f"{w}x{h} px after a {border} px border crop",
        )
    w = _gaussian_window().to(x.device)
    mu_x, mu_y = F.conv2d(x, w), F.conv2d(y, w)  # no padding: only windows inside the image
    var_x = F.conv2d(x * x, w) - mu_x**2
    var_y = F.conv2d(y * y, w) - mu_y**2
    cov = F.conv2d(x * y, w) - mu_x * mu_y
    c1, c2 = (0.01 * Y_PEAK) ** 2, (0.03 * Y_PEAK) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean())
