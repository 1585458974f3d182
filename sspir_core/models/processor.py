"""The Processor: extracts the degradation-independent structure prior from the LQ image.

It is the ControlNet's ``controlnet_cond_embedding``. Three RGB heads read its intermediate
features at H/2, H/4 and H/8; during training they are pulled towards the GT image (RGB + FFT
losses), which is what makes the features degradation-independent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Receptive-field radius of the conv stack (47 px window), rounded up to a multiple of 8.
RECEPTIVE_HALO = 32


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

    def forward_tiled(
        self,
        lq: torch.Tensor,
        tile: int,
        halo: int = RECEPTIVE_HALO,
        return_rgbs: bool = True,
        cast: tuple[torch.device, torch.dtype] | None = None,
        on_tile: Callable[[], None] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Same result as :meth:`forward` (up to float rounding) with memory bounded by the tile size.

        The network is convolutions only, so each output depends on a 47-px window of the input: tiles
        with a ``halo`` of at least 24 px of real neighbours, cropped back, are exact. ``tile``, ``halo``
        and the image size must be multiples of 8 so every tile keeps the stride-2 grid of the full image.
        ``cast`` (device, dtype) moves each input tile alone, so ``lq`` never gets a whole-image copy.
        ``on_tile()`` is called before each tile (progress; a cancel check may raise there).
        """
        h, w = lq.shape[-2:]
        if any(v % 8 for v in (tile, halo, h, w)) or tile <= 0:
            raise ValueError(f"tile ({tile}), halo ({halo}) and image size {h}x{w} must be positive multiples of 8")

        def run(x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
            if on_tile is not None:
                on_tile()
            return self(x if cast is None else x.to(*cast), return_rgbs)

        if h <= tile and w <= tile:
            return run(lq)
        features: torch.Tensor | None = None
        rgbs: list[torch.Tensor] = []
        for y0 in range(0, h, tile):
            for x0 in range(0, w, tile):
                y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
                py0, px0, py1, px1 = max(0, y0 - halo), max(0, x0 - halo), min(h, y1 + halo), min(w, x1 + halo)
                f, r = run(lq[..., py0:py1, px0:px1])
                if features is None:
                    features = f.new_empty(*f.shape[:2], h // 8, w // 8)
                    rgbs = [
                        t.new_empty(*t.shape[:2], h * t.shape[-2] // (py1 - py0), w * t.shape[-1] // (px1 - px0))
                        for t in r
                    ]
                for full, part in ((features, f), *zip(rgbs, r)):
                    s = (py1 - py0) // part.shape[-2]  # this output's downscale factor
                    full[..., y0 // s : y1 // s, x0 // s : x1 // s] = part[
                        ..., (y0 - py0) // s : (y1 - py0) // s, (x0 - px0) // s : (x1 - px0) // s
                    ]
        assert features is not None
        return features, rgbs

    def zero_init_output(self) -> None:
        """Zero ``conv_out`` so a freshly built ControlNet starts as a no-op (as when training from scratch)."""
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
