"""The SD UNet patched with SSP-IR's Prior-Guided Attention (image and pixel attentions)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from torch import nn

from .blocks import (
    check_shared_batch,
    check_supported,
    heads_per_level,
    image_attentions_for,
    per_level,
    prior_attention,
    reject_unused,
    run_down_blocks,
    run_mid_block,
    run_up_block,
    time_embedding,
)

CROSS_DOWN, PLAIN_DOWN = "CrossAttnDownBlock2D", "DownBlock2D"
CROSS_UP, PLAIN_UP = "CrossAttnUpBlock2D", "UpBlock2D"
CROSS_MID = "UNetMidBlock2DCrossAttn"


class SSPIRUNet(UNet2DConditionModel):
    """A diffusers UNet2DConditionModel carrying ``image_attentions`` and ``pixel_attentions``.

    Build it with :func:`patch_unet` from any SD1.x/2.x UNet (its SD weights are kept as they are).
    Only ``forward`` differs from the stock class; the state-dict keys match the official checkpoint.
    """

    def forward(  # noqa: D417
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        image_encoder_hidden_states: torch.Tensor | None = None,
        down_block_additional_residuals: Sequence[torch.Tensor] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        pixel_attention_context: Sequence[torch.Tensor | None] | None = None,
        return_dict: bool = True,
        **unused,
    ) -> UNet2DConditionOutput | tuple[torch.Tensor]:
        """Predict the noise.

        ``down_block_additional_residuals`` / ``mid_block_additional_residual``: the ControlNet outputs,
        added to the skips and to the mid output (None = zeros). ``pixel_attention_context``: what the
        pixel attentions attend to; defaults to the down residuals (the official behaviour), zeros when
        there are none. Pass it separately to examine each path on its own.
        ``sample`` may hold B rows for a context batch of k*B (k CFG copies of one latent): see
        :func:`.blocks.run_down_blocks`; the output then has k*B rows.
        """
        reject_unused(unused, "SSPIRUNet")
        check_shared_batch(sample, encoder_hidden_states)
        temb = time_embedding(self, sample, timestep, batch=encoder_hidden_states.shape[0])
        ckpt = self.is_gradient_checkpointing and self.training

        upsample_factor = 2 ** (len(self.up_blocks) - 1)
        forward_upsample_size = any(s % upsample_factor != 0 for s in sample.shape[-2:])

        h = self.conv_in(sample)
        h, skips = run_down_blocks(self.down_blocks, h, temb, encoder_hidden_states, image_encoder_hidden_states, ckpt)

        residuals = list(down_block_additional_residuals) if down_block_additional_residuals is not None else None
        if residuals is not None:
            if len(residuals) != len(skips):
                raise ValueError(f"expected {len(skips)} down residuals (one per skip), got {len(residuals)}")
            skips = [s + r for s, r in zip(skips, residuals)]
        contexts: list[torch.Tensor | None]
        if pixel_attention_context is not None:
            contexts = list(pixel_attention_context)
            if len(contexts) != len(skips):
                raise ValueError(f"expected {len(skips)} pixel-attention contexts, got {len(contexts)}")
        else:
            contexts = residuals if residuals is not None else [None] * len(skips)

        h = run_mid_block(self.mid_block, h, temb, encoder_hidden_states, image_encoder_hidden_states, ckpt)
        if mid_block_additional_residual is not None:
            h = h + mid_block_additional_residual

        for i, block in enumerate(self.up_blocks):
            n = len(block.resnets)
            block_skips, skips = skips[-n:], skips[:-n]
            block_contexts, contexts = contexts[-n:], contexts[:-n]
            is_final = i == len(self.up_blocks) - 1
            upsample_size = skips[-1].shape[2:] if (forward_upsample_size and not is_final) else None
            h = run_up_block(
                block,
                h,
                block_skips,
                block_contexts,
                temb,
                encoder_hidden_states,
                image_encoder_hidden_states,
                upsample_size,
                ckpt,
            )

        if self.conv_norm_out is not None:
            h = self.conv_act(self.conv_norm_out(h))
        h = self.conv_out(h)
        return UNet2DConditionOutput(sample=h) if return_dict else (h,)

    def sspir_parameters(self) -> list[nn.Parameter]:
        """The parameters SSP-IR trains in the UNet: image and pixel attentions."""
        return [p for name, p in self.named_parameters() if is_prior_attention_key(name)]


def is_prior_attention_key(key: str) -> bool:
    """True for UNet keys that belong to the SSP-IR additions (not to the SD UNet)."""
    return ".image_attentions." in key or ".pixel_attentions." in key


def patch_unet(unet: UNet2DConditionModel) -> SSPIRUNet:
    """Add the SSP-IR attentions to a stock SD UNet, in place, and return it as an :class:`SSPIRUNet`.

    New modules are created on the UNet's current device and dtype (``meta`` included) with
    diffusers' default initialisation; load trained weights afterwards.
    """
    if isinstance(unet, SSPIRUNet):
        return unet
    cfg = unet.config
    check_supported(cfg, "UNet")
    levels = len(cfg.block_out_channels)
    if list(cfg.down_block_types) != [t for t in cfg.down_block_types if t in (CROSS_DOWN, PLAIN_DOWN)]:
        raise ValueError(f"unsupported down blocks {cfg.down_block_types}")
    if (
        any(t not in (CROSS_UP, PLAIN_UP) for t in cfg.up_block_types)
        or cfg.get("mid_block_type", CROSS_MID) != CROSS_MID
    ):
        raise ValueError(f"unsupported up/mid blocks {cfg.up_block_types} / {cfg.get('mid_block_type')}")
    param = next(unet.parameters())
    heads = heads_per_level(cfg)
    depth = per_level(cfg.transformer_layers_per_block, levels)
    channels = list(cfg.block_out_channels)
    groups, linear, upcast = cfg.norm_num_groups, cfg.use_linear_projection, cfg.upcast_attention

    with torch.device(param.device):
        for i, block in enumerate(unet.down_blocks):
            if cfg.down_block_types[i] == CROSS_DOWN:
                block.image_attentions = image_attentions_for(block, channels[i], heads[i], depth[i], cfg)
        unet.mid_block.image_attentions = image_attentions_for(unet.mid_block, channels[-1], heads[-1], depth[-1], cfg)

        rev_channels, rev_heads, rev_depth = channels[::-1], heads[::-1], depth[::-1]
        for i, block in enumerate(unet.up_blocks):
            out_ch = rev_channels[i]
            skip_ch_last = rev_channels[min(i + 1, levels - 1)]  # skip width of the block's last layer
            n = len(block.resnets)
            if cfg.up_block_types[i] == CROSS_UP:
                block.image_attentions = image_attentions_for(block, out_ch, rev_heads[i], rev_depth[i], cfg)
                block.pixel_attentions = nn.ModuleList(
                    prior_attention(
                        out_ch,
                        rev_heads[i],
                        skip_ch_last if j == n - 1 else out_ch,
                        groups,
                        linear,
                        rev_depth[i],
                        upcast,
                    )
                    for j in range(n)
                )
            else:
                # Official quirk: UpBlock2D pixel attentions are 1 head, conv projections, depth 1, and
                # take out_channels as context width for every layer.
                if skip_ch_last != out_ch:
                    raise ValueError(
                        f"up block {i} is an UpBlock2D whose last skip has {skip_ch_last} channels but its pixel "
                        f"attention context width is {out_ch}: SSP-IR needs block_out_channels[-1] == "
                        f"block_out_channels[-2] (true for SD), got {channels}"
                    )
                block.pixel_attentions = nn.ModuleList(
                    prior_attention(out_ch, 1, out_ch, groups, linear=False, depth=1, upcast=False) for _ in range(n)
                )
    if any(p.dtype != param.dtype for p in unet.parameters()):
        unet.to(dtype=param.dtype)
    unet.__class__ = SSPIRUNet
    unet.register_to_config(use_image_cross_attention=True, use_textual_restore=False)
    return unet  # type: ignore[return-value]
