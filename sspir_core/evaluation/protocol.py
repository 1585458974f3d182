"""Evaluation protocols: which part of each image is scored.

``realsr``: the real-world SR protocol of StableSR, DiffBIR, PASD, SeeSR, SUPIR and OSEDiff tables on
RealSR, DRealSR and DIV2K-val: a 128 px centre crop of the LQ image is restored x4 to 512 px and scored
against the 512 px centre crop of the GT. The GT box is placed at 4x the LQ box so the two stay aligned
when a side is odd.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError

PROTOCOLS = ("none", "realsr")


@dataclass(frozen=True)
class Protocol:
    name: str = "none"
    lq_size: int = 128
    scale: int = 4

    @property
    def gt_size(self) -> int:
        return self.lq_size * self.scale

    def gt_box(self, h: int, w: int, what: str) -> tuple[int, int, int, int]:
        """``(top, left, height, width)`` of the scored region of a GT-sized image."""
        if self.name == "none":
            return 0, 0, h, w
        if min(h, w) < self.gt_size:
            raise InputError(
                f"--protocol {self.name}: {what} is {w}x{h} px, smaller than the {self.gt_size} px centre crop"
            )
        top = self.scale * ((h // self.scale - self.lq_size) // 2)
        left = self.scale * ((w // self.scale - self.lq_size) // 2)
        return top, left, self.gt_size, self.gt_size

    def crop_lq(self, lq: torch.Tensor, what: str) -> torch.Tensor:
        """The LQ centre crop that is restored (identity for ``none``)."""
        if self.name == "none":
            return lq
        h, w = lq.shape[-2:]
        if min(h, w) < self.lq_size:
            raise InputError(
                f"--protocol {self.name}: {what} is {w}x{h} px, smaller than the {self.lq_size} px LQ centre crop"
            )
        top, left = (h - self.lq_size) // 2, (w - self.lq_size) // 2
        return lq[..., top : top + self.lq_size, left : left + self.lq_size]

    def check_sizes(self, pred_hw: tuple[int, int], gt_hw: tuple[int, int], name: str) -> None:
        """Raise :class:`InputError` unless a restored image of ``pred_hw`` can be scored against ``gt_hw``.
        Under ``realsr`` the restored image may be the full GT size (cropped like the GT) or already the crop
        size (restored from the LQ crop)."""
        (ph, pw), (gh, gw) = pred_hw, gt_hw
        _, _, h, w = self.gt_box(gh, gw, f"GT {name}")
        if (ph, pw) != (gh, gw) and (ph, pw) != (h, w):
            wanted = f" (protocol {self.name} accepts {w}x{h} or the GT size)" if self.name != "none" else ""
            raise InputError(
                f"{name}: restored image is {pw}x{ph} px but GT is {gw}x{gh} px{wanted}; "
                "sizes must match, nothing is resized behind your back"
            )

    def crop_pair(self, pred: torch.Tensor, gt: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Scored regions of a restored image and its GT (see :meth:`check_sizes`)."""
        gh, gw = gt.shape[-2:]
        self.check_sizes(tuple(pred.shape[-2:]), (gh, gw), name)
        top, left, h, w = self.gt_box(gh, gw, f"GT {name}")
        if tuple(pred.shape[-2:]) == (gh, gw):
            pred = pred[..., top : top + h, left : left + w]
        return pred, gt[..., top : top + h, left : left + w]


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise InputError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {name!r}")
    return Protocol(name)
