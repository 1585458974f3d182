"""Colour correction of a restored image against its (upscaled) low-quality input.

Diffusion restorers drift in colour; the usual cure (StableSR, SeeSR, DiffBIR) is to take the colour, i.e.
the low frequencies or the channel statistics, from the LQ image. It must run ONCE on the whole stitched
output: run per tile, each tile gets its own statistics and the seams show (a common user complaint).
So these functions work on any size without tiling, with memory linear in the image size.

All take ``[B, 3, H, W]`` tensors in [0, 1]; ``source`` may have batch 1 (shared by every output).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ..errors import InputError
from .choices import COLOR_FIX_METHODS

ColorFixMethod = Literal["wavelet", "adain", "none"]
WAVELET_LEVELS = 5
"""Blur levels of the wavelet split (dilations 1, 2, 4, 8, 16), as in StableSR and SeeSR."""


def _check_pair(target: torch.Tensor, source: torch.Tensor, same_size: bool) -> None:
    for name, t in (("target", target), ("source", source)):
        if not isinstance(t, torch.Tensor) or t.ndim != 4:
            raise InputError(f"colour fix: {name} must be a [B, C, H, W] tensor, got {getattr(t, 'shape', type(t))}")
    if target.shape[1] != source.shape[1]:
        raise InputError(f"colour fix: target has {target.shape[1]} channels, source {source.shape[1]}")
    if source.shape[0] not in (1, target.shape[0]):
        raise InputError(
            f"colour fix: source batch {source.shape[0]} must be 1 or equal target batch {target.shape[0]}"
        )
    if same_size and target.shape[-2:] != source.shape[-2:]:
        raise InputError(
            f"colour fix: target is {tuple(target.shape[-2:])} but source is {tuple(source.shape[-2:])} (H, W); "
            "resize the LQ image to the output size (and crop any padding) first"
        )


def adain_color_fix(target: torch.Tensor, source: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Give each channel of ``target`` the mean and standard deviation of ``source`` (per image).

    Not clamped: use :func:`apply_color_fix` for a displayable result.
    """
    _check_pair(target, source, same_size=False)
    t = target.float()
    s = source.float()
    t_mean = t.mean(dim=(2, 3), keepdim=True)
    t_std = t.std(dim=(2, 3), keepdim=True, unbiased=False)
    s_mean = s.mean(dim=(2, 3), keepdim=True)
    s_std = s.std(dim=(2, 3), keepdim=True, unbiased=False)
    out = (t - t_mean).mul_(s_std / (t_std + eps)).add_(s_mean)  # one image-sized temporary, not three
    return out.to(target.dtype)


def _binomial_blur(x: torch.Tensor, dilation: int) -> torch.Tensor:
    """3x3 Gaussian ([1,2,1] x [1,2,1] / 16) with holes ``dilation`` apart, replicate border.

    Done as two 1-D passes (the kernel is separable): fewer operations than a 3x3 conv, same result.
    Replicate padding keeps constants constant at the border, which the colour transfer relies on.
    """
    c = x.shape[1]
    k = x.new_tensor([0.25, 0.5, 0.25])
    x = F.pad(x, (dilation, dilation, 0, 0), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, 3).expand(c, 1, 1, 3), dilation=(1, dilation), groups=c)
    x = F.pad(x, (0, 0, dilation, dilation), mode="replicate")
    return F.conv2d(x, k.view(1, 1, 3, 1).expand(c, 1, 3, 1), dilation=(dilation, 1), groups=c)


def wavelet_lowpass(x: torch.Tensor, levels: int = WAVELET_LEVELS) -> torch.Tensor:
    """Low band of the a-trous wavelet split: the blur applied ``levels`` times, dilation doubling each time."""
    for i in range(levels):
        x = _binomial_blur(x, 2**i)
    return x


def wavelet_color_fix(target: torch.Tensor, source: torch.Tensor, levels: int = WAVELET_LEVELS) -> torch.Tensor:
    """Replace the low-frequency band of ``target`` with that of ``source``, keeping target's detail.

    The a-trous split is ``x = sum_i high_i + low`` with ``low = L(x)``, so the result
    ``high(target) + low(source)`` equals ``target + L(source - target)``: one blur of one difference image
    instead of two full decompositions (the blur is linear). Sizes must match. Not clamped.
    """
    _check_pair(target, source, same_size=True)
    t = target.float()
    diff = source.float() - t  # broadcasts a batch-1 source
    return (t + wavelet_lowpass(diff, levels)).to(target.dtype)


def apply_color_fix(
    target: torch.Tensor, source: torch.Tensor, method: ColorFixMethod | str = "wavelet"
) -> torch.Tensor:
    """Colour-correct ``target`` against ``source`` with ``method`` and clamp to [0, 1].

    ``"none"`` returns ``target`` unchanged (not even clamped), so it is a true no-op.
    """
    key = str(method).strip().lower()
    if key == "none":
        return target
    if key == "wavelet":
        out = wavelet_color_fix(target, source)
    elif key == "adain":
        out = adain_color_fix(target, source)
    else:
        raise InputError(f"unknown colour fix {method!r}: choose one of {', '.join(COLOR_FIX_METHODS)}")
    return out.clamp_(0.0, 1.0)  # out is our own temporary: clamp in place
