"""The luma channel that restoration papers score PSNR/SSIM on.

The field's protocol (BasicSR's ``rgb2ycbcr(..., y_only=True)``, MATLAB's ``rgb2ycbcr``) is ITU-R BT.601
"studio swing": ``Y = 16 + (65.481 R + 128.553 G + 24.966 B)`` with RGB in [0, 1], so Y lies in [16, 235]
on the 0..255 scale and PSNR/SSIM use a peak of 255. Using full-range Y or RGB gives different numbers
that do not line up with published tables.
"""

from __future__ import annotations

import torch

BT601_Y_WEIGHTS = (65.481, 128.553, 24.966)
"""Coefficients on [0, 1] RGB; they sum to 219 = 235 - 16."""
Y_OFFSET = 16.0
Y_PEAK = 255.0


def rgb_to_y(rgb: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` RGB in [0, 1] to ``[B, 1, H, W]`` BT.601 Y in [16, 235] (float64, not rounded)."""
    if rgb.ndim != 4 or rgb.shape[1] != 3:
        raise ValueError(f"expected [B, 3, H, W] RGB, got shape {tuple(rgb.shape)}")
    w = torch.tensor(BT601_Y_WEIGHTS, dtype=torch.float64, device=rgb.device).view(1, 3, 1, 1)
    return (rgb.double() * w).sum(dim=1, keepdim=True) + Y_OFFSET
