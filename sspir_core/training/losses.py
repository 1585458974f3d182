"""SSP-IR training losses: epsilon MSE plus the Processor's RGB and FFT constraints."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

RGB_WEIGHT = 0.1
FFT_WEIGHT = 0.01


@dataclass
class SSPIRLosses:
    total: torch.Tensor
    diffusion: torch.Tensor
    rgb: torch.Tensor
    fft: torch.Tensor
    rgb_terms: list[torch.Tensor]
    fft_terms: list[torch.Tensor]


def fft_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean |.| between the stacked (real, imag) parts of the unnormalised rfft2 of both images."""
    p = torch.view_as_real(torch.fft.rfft2(pred.float()))
    t = torch.view_as_real(torch.fft.rfft2(target.float()))
    return F.l1_loss(p, t)


def processor_losses(rgbs: Sequence[torch.Tensor], gt: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-scale weighted RGB and FFT terms; ``gt`` in [-1,1] is resized (bilinear) to each RGB head's size."""
    rgb_terms, fft_terms = [], []
    for r in rgbs:
        g = F.interpolate(gt.float(), size=r.shape[-2:], mode="bilinear")
        rgb_terms.append(RGB_WEIGHT * F.l1_loss(r.float(), g))
        fft_terms.append(FFT_WEIGHT * fft_l1(r, g))
    return rgb_terms, fft_terms


def sspir_losses(
    noise_pred: torch.Tensor, noise: torch.Tensor, rgbs: Sequence[torch.Tensor], gt: torch.Tensor
) -> SSPIRLosses:
    """``MSE(eps_hat, eps) + sum_s 0.1*L1 + sum_s 0.01*FFT-L1`` (sums over scales, as in train.py)."""
    diffusion = F.mse_loss(noise_pred.float(), noise.float())
    rgb_terms, fft_terms = processor_losses(rgbs, gt)
    zero = diffusion.new_zeros(())
    rgb = torch.stack(rgb_terms).sum() if rgb_terms else zero
    fft = torch.stack(fft_terms).sum() if fft_terms else zero
    return SSPIRLosses(diffusion + rgb + fft, diffusion, rgb, fft, rgb_terms, fft_terms)
