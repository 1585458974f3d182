"""SSP-IR's ControlNet residuals joined to another ControlNet's in the ``control`` dict of an LDM UNet.

How ComfyUI's UNet reads ``control`` (checked against 0.3.75, ``openaimodel.py`` ``apply_control``): three lists,
each consumed with ``pop()``, i.e. from its end. ``"input"`` is added to ``h`` after each input block,
``"middle"`` after the middle block, ``"output"`` to each skip connection as the output blocks take it (the skips
are popped deepest first, so ``"output"[i]`` meets the skip of input block ``i``). ComfyUI's standard ControlNet
(``comfy/cldm/cldm.py``) appends one ``"output"`` residual per input block and one ``"middle"``; chained
ControlNets are summed index by index (``controlnet.py`` ``control_merge``).

SSP-IR's residuals are diffusers' ``down_block_res_samples`` (the skips in the same order, conv_in first) plus a
mid residual, and diffusers adds them to the skip connections and the middle output: ``"output"`` and
``"middle"``, index by index with any other ControlNet's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..errors import InputError


def merge_control(
    control: Mapping[str, Sequence[torch.Tensor | None]] | None, downs: Sequence[torch.Tensor], mid: torch.Tensor
) -> dict[str, list[torch.Tensor | None]]:
    """A new ``control`` dict: ``downs`` added to ``"output"``, ``mid`` to the ``"middle"`` entry the UNet pops.

    ``control`` (another ControlNet's, or None) is not modified; ``None`` entries and missing or empty lists mean
    "nothing there". Other keys (``"input"``) are kept as they are. A different number of skip residuals is an
    error: summed by index they would meet the wrong skips.
    """
    out: dict[str, list[torch.Tensor | None]] = {k: list(v) for k, v in (control or {}).items()}
    theirs = out.get("output") or [None] * len(downs)
    if len(theirs) != len(downs):
        raise InputError(
            f"another ControlNet gives {len(theirs)} skip residuals, SSP-IR {len(downs)}: they cannot be "
            "combined on this UNet (is that ControlNet made for this base model?)"
        )
    out["output"] = [d if t is None else t + d for t, d in zip(theirs, downs)]
    middle = out.get("middle") or [None]
    last = middle[-1]  # the one entry apply_control pops
    out["middle"] = [*middle[:-1], mid if last is None else last + mid]
    return out
