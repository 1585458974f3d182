"""The Processor: extracts the degradation-independent structure prior from the LQ image.

It is the ControlNet's ``controlnet_cond_embedding``. Three RGB heads read its intermediate
features at H/2, H/4 and H/8; during training they are pulled towards the GT image (RGB + FFT
losses), which is what makes the features degradation-independent.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class Processor(nn.Module):
    """Conv stack ``conv_in -> [conv, conv stride 2] x 3 -> conv_out`` with SiLU after every conv but the last."""

    def __init__(
        self,
        out_channels: int,
        in_channels: int = 3,
        block_out_channels: Sequence[int] = (16, 32, 96, 256),
        return_rgbs: bool = True,
    ):
        super().__init__()
        ch = list(block_out_channels)
        self.conv_in = nn.Conv2d(in_channels, ch[0], kernel_size=3, padding=1)
        self.blocks = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        for c_in, c_out in zip(ch[:-1], ch[1:]):
            self.blocks.append(nn.Conv2d(c_in, c_in, kernel_size=3, padding=1))
            self.blocks.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, stride=2))
            if return_rgbs:
                self.to_rgbs.append(nn.Conv2d(c_out, 3, kernel_size=3, padding=1))
        self.conv_out = nn.Conv2d(ch[-1], out_channels, kernel_size=3, padding=1)
        self.return_rgbs = return_rgbs

    def forward(self, lq: torch.Tensor, return_rgbs: bool = True) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``lq``: [B,3,H,W] in [0,1] (not normalised). Returns (features at H/8, RGB maps at H/2, H/4, H/8)."""
        h = F.silu(self.conv_in(lq))
        rgbs: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            h = F.silu(block(h))
            if i % 2 == 1 and return_rgbs and self.return_rgbs:
                rgbs.append(self.to_rgbs[i // 2](h))
        return self.conv_out(h), rgbs

    def zero_init_output(self) -> None:
        """Zero ``conv_out`` so a freshly built ControlNet starts as a no-op (as when training from scratch)."""
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
