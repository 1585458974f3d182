"""Where SSP-IR's attentions sit in an LDM-layout SD UNet (ComfyUI's ``openaimodel.UNetModel``).

Our weights use diffusers' names (``down_blocks.{i}.image_attentions.{j}``, ...); ComfyUI's UNet is the LDM
one: ``input_blocks[0]`` is ``conv_in``, then per level ``layers_per_block`` blocks ``[ResBlock,
SpatialTransformer?]`` and (but on the last level) one ``[Downsample]``; ``middle_block`` is ``[ResBlock,
SpatialTransformer, ResBlock]``; ``output_blocks`` has ``layers_per_block + 1`` blocks per level, deepest first,
each ``[ResBlock, SpatialTransformer?, Upsample?]``. So down layer ``(i, j)`` is input block
``1 + i (L + 1) + j`` and up layer ``(i, j)`` is output block ``i (L + 1) + j``.

The skip that output block ``k`` concatenates is input block ``N - 1 - k``'s output (``N`` input blocks), and
SSP-IR's pixel attention of that layer reads the ControlNet residual with the same index (the official
``up_blocks.i.pixel_attentions.j`` takes residual ``11 - 3i - j`` for SD1.5).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..models.blocks import per_level
from ..weights.ldm_layout import ldm_mismatch  # noqa: F401 (the patch-vs-MODEL comparison, used with these)

CROSS_DOWN, CROSS_UP = "CrossAttnDownBlock2D", "CrossAttnUpBlock2D"


@dataclass(frozen=True)
class HookSite:
    """One SSP-IR attention in the LDM UNet.

    ``kind``: ``"image"`` (runs just before the block's SpatialTransformer, context = Refine-layer embedding) or
    ``"pixel"`` (runs after the block's SpatialTransformer, or after its ResBlock when it has none, and before
    its Upsample; context = ControlNet residual ``residual``). ``block``/``index``: ComfyUI's
    ``transformer_options["block"]``. ``key``: the attention's name in our (diffusers-layout) weights.
    """

    kind: str
    block: str
    index: int
    key: str
    residual: int | None = None


def _levels(config: Mapping[str, Any]) -> tuple[int, int]:
    levels = len(config["block_out_channels"])
    layers = per_level(config.get("layers_per_block", 2), levels)
    if len(set(layers)) != 1:
        raise ValueError(f"layers_per_block must be the same on every level, got {layers}")
    return levels, layers[0]


def input_block_count(config: Mapping[str, Any]) -> int:
    """Number of LDM input blocks (= number of skips = number of ControlNet down residuals)."""
    levels, layers = _levels(config)
    return levels * (layers + 1)


def residual_shapes(config: Mapping[str, Any], height: int, width: int) -> list[tuple[int, int, int]]:
    """``(C, H, W)`` of each ControlNet down residual (skip order, ``conv_in``'s first) for a latent of
    ``height`` x ``width``, from the ControlNet's (diffusers) config alone.

    As in diffusers' ControlNet encoder: ``conv_in`` keeps the size at ``block_out_channels[0]``; level ``i``
    has ``layers_per_block`` layers at ``block_out_channels[i]``; every level but the last ends with a
    ``Downsample2D``, a 3x3 stride-2 conv with padding ``downsample_padding`` (with 0, one row and column of
    zeros are added at the bottom and right first), whose output is a residual too.
    """
    levels = len(config["block_out_channels"])
    channels = list(config["block_out_channels"])
    layers = per_level(config.get("layers_per_block", 2), levels)
    pad = int(config.get("downsample_padding", 1))
    padded = 1 if pad == 0 else 2 * pad  # rows (and columns) the conv sees beyond the input's

    def down(n: int) -> int:
        return (n + padded - 3) // 2 + 1

    h, w = int(height), int(width)
    shapes = [(channels[0], h, w)]
    for i in range(levels):
        shapes += [(channels[i], h, w)] * layers[i]
        if i < levels - 1:
            h, w = down(h), down(w)
            shapes.append((channels[i], h, w))
    return shapes


def hook_sites(config: Mapping[str, Any]) -> list[HookSite]:
    """Every SSP-IR attention of a UNet with this (diffusers) config, in the order the UNet runs them."""
    levels, layers = _levels(config)
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    n = input_block_count(config)
    sites = []
    for i in range(levels):
        if down[i] == CROSS_DOWN:
            sites += [
                HookSite("image", "input", 1 + i * (layers + 1) + j, f"down_blocks.{i}.image_attentions.{j}")
                for j in range(layers)
            ]
    sites.append(HookSite("image", "middle", 0, "mid_block.image_attentions.0"))
    for i in range(levels):
        for j in range(layers + 1):
            k = i * (layers + 1) + j
            if up[i] == CROSS_UP:
                sites.append(HookSite("image", "output", k, f"up_blocks.{i}.image_attentions.{j}"))
            sites.append(HookSite("pixel", "output", k, f"up_blocks.{i}.pixel_attentions.{j}", residual=n - 1 - k))
    return sites


def expected_ldm_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The shape-deciding entries of ComfyUI's detected ``unet_config`` for the UNet SSP-IR was trained on.

    Key names are those of ``comfy/model_detection.py``'s ``detect_unet_config``.
    """
    levels, layers = _levels(config)
    channels = list(config["block_out_channels"])
    depth = per_level(config.get("transformer_layers_per_block", 1), levels)
    down = list(config["down_block_types"])
    return {
        "in_channels": int(config.get("in_channels", 4)),
        "model_channels": channels[0],
        "channel_mult": [c // channels[0] for c in channels],
        "num_res_blocks": [layers] * levels,
        "transformer_depth": [depth[i] if down[i] == CROSS_DOWN else 0 for i in range(levels) for _ in range(layers)],
        "context_dim": int(config["cross_attention_dim"]),
        "use_linear_in_transformer": bool(config.get("use_linear_projection", False)),
    }
