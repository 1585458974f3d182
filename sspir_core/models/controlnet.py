"""The SSP-IR ControlNet: a copy of the UNet encoder with image attentions, fed by the Processor."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from .blocks import (
    check_shared_batch,
    check_supported,
    heads_per_level,
    image_attentions_for,
    per_level,
    reject_unused,
    run_down_blocks,
    run_mid_block,
    time_embedding,
)
from .config_keys import init_kwargs
from .processor import Processor

DEFAULT_PROCESSOR_CHANNELS = (16, 32, 96, 256)


class ControlResiduals(NamedTuple):
    """What :class:`SSPIRControlNet` returns (its own type: diffusers' ``ControlNetOutput`` has other fields).

    ``rgbs``: the Processor's RGB maps (H/2, H/4, H/8); ``down_residuals``/``mid_residual``: scaled residuals."""

    rgbs: list[torch.Tensor]
    down_residuals: list[torch.Tensor]
    mid_residual: torch.Tensor


class SSPIRControlNet(ControlNetModel):
    """diffusers' ControlNetModel with the SSP-IR Processor and image attentions. Build with :func:`make_controlnet`."""

    def encode_condition(
        self,
        lq: torch.Tensor,
        return_rgbs: bool = True,
        tile: int | None = None,
        cast: tuple[torch.device, torch.dtype] | None = None,
        on_tile: Callable[[], None] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the Processor once per image; the result can be reused at every denoising step.

        ``tile`` (pixels, multiple of 8) bounds its memory on large images with an exact tiled pass;
        ``cast`` (device, dtype) is then applied to each tile of ``lq`` alone; ``on_tile()`` runs before each tile
        (once when untiled).
        """
        if tile is not None:
            return self.controlnet_cond_embedding.forward_tiled(
                lq, tile, return_rgbs=return_rgbs, cast=cast, on_tile=on_tile
            )
        if on_tile is not None:
            on_tile()
        return self.controlnet_cond_embedding(lq, return_rgbs=return_rgbs)

    def forward(  # noqa: D417
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: torch.Tensor | None = None,
        conditioning_scale: float | torch.Tensor = 1.0,
        image_encoder_hidden_states: torch.Tensor | None = None,
        processor_features: torch.Tensor | None = None,
        guess_mode: bool = False,
        return_rgbs: bool = True,
        **unused,
    ) -> ControlResiduals:
        """``controlnet_cond``: LQ in [0,1] [B,3,8h,8w], or pass ``processor_features`` from :meth:`encode_condition`.

        ``sample`` (and the condition) may hold B rows for a context batch of k*B, k CFG copies of one
        latent: see :func:`.blocks.run_down_blocks`; the residuals then have k*B rows.
        """
        reject_unused(unused, "SSPIRControlNet")
        rgbs: list[torch.Tensor] = []
        if processor_features is None:
            if controlnet_cond is None:
                raise ValueError("pass controlnet_cond (the LQ image) or processor_features")
            processor_features, rgbs = self.encode_condition(controlnet_cond, return_rgbs)
        check_shared_batch(sample, encoder_hidden_states)
        temb = time_embedding(self, sample, timestep, batch=encoder_hidden_states.shape[0])
        ckpt = self.is_gradient_checkpointing and self.training

        h = self.conv_in(sample) + processor_features
        h, skips = run_down_blocks(self.down_blocks, h, temb, encoder_hidden_states, image_encoder_hidden_states, ckpt)
        h = run_mid_block(self.mid_block, h, temb, encoder_hidden_states, image_encoder_hidden_states, ckpt)

        downs = [zero_conv(s) for s, zero_conv in zip(skips, self.controlnet_down_blocks)]
        mid = self.controlnet_mid_block(h)
        if guess_mode and not self.config.global_pool_conditions:
            scales = torch.logspace(-1, 0, len(downs) + 1, device=h.device) * conditioning_scale
            downs = [d * s for d, s in zip(downs, scales)]
            mid = mid * scales[-1]
        else:
            downs = [d * conditioning_scale for d in downs]
            mid = mid * conditioning_scale
        return ControlResiduals(rgbs, downs, mid)


def controlnet_config_from_unet(
    unet_config: dict, processor_channels: Sequence[int] = DEFAULT_PROCESSOR_CHANNELS
) -> dict:
    """The ControlNet config that the official ``ControlNetModel.from_unet`` derives from a UNet config."""
    keys = (
        "in_channels",
        "flip_sin_to_cos",
        "freq_shift",
        "down_block_types",
        "only_cross_attention",
        "block_out_channels",
        "layers_per_block",
        "downsample_padding",
        "mid_block_scale_factor",
        "act_fn",
        "norm_num_groups",
        "norm_eps",
        "cross_attention_dim",
        "transformer_layers_per_block",
        "attention_head_dim",
        "num_attention_heads",
        "use_linear_projection",
        "upcast_attention",
        "resnet_time_scale_shift",
    )
    cfg = {k: unet_config[k] for k in keys if k in unet_config}
    cfg["conditioning_embedding_out_channels"] = list(processor_channels)
    return cfg


def make_controlnet(config: dict, zero_init: bool = True) -> SSPIRControlNet:
    """Build an SSP-IR ControlNet from a (official or UNet-derived) config on the current default device."""
    check_supported(config, "ControlNet")
    if config.get("use_srresnet", False):
        raise ValueError(
            "ControlNet config has use_srresnet=true (an MSRResNet pre-processor): SSP-IR's train.py "
            "uses use_srresnet=false and this pack does not implement that variant"
        )
    known = init_kwargs(ControlNetModel, dict(config))
    known["conditioning_embedding_out_channels"] = tuple(
        config.get("conditioning_embedding_out_channels") or DEFAULT_PROCESSOR_CHANNELS
    )
    net = ControlNetModel(**known)
    net.controlnet_cond_embedding = Processor(
        out_channels=net.config.block_out_channels[0],
        in_channels=net.config.conditioning_channels,
        block_out_channels=net.config.conditioning_embedding_out_channels,
        return_rgbs=config.get("return_rgbs", True),
    )
    if zero_init:
        net.controlnet_cond_embedding.zero_init_output()
    levels = len(net.config.block_out_channels)
    heads = heads_per_level(net.config)
    depth = per_level(net.config.transformer_layers_per_block, levels)
    channels = list(net.config.block_out_channels)
    for i, block in enumerate(net.down_blocks):
        if getattr(block, "attentions", None) is not None:
            block.image_attentions = image_attentions_for(block, channels[i], heads[i], depth[i], net.config)
    net.mid_block.image_attentions = image_attentions_for(net.mid_block, channels[-1], heads[-1], depth[-1], net.config)
    net.__class__ = SSPIRControlNet
    net.register_to_config(
        use_image_cross_attention=True, return_rgbs=config.get("return_rgbs", True), use_srresnet=False
    )
    return net  # type: ignore[return-value]


def controlnet_from_unet(
    unet: UNet2DConditionModel, processor_channels: Sequence[int] = DEFAULT_PROCESSOR_CHANNELS
) -> SSPIRControlNet:
    """Initialise a ControlNet from a patched UNet's encoder (weights copied), as the official trainer does."""
    with torch.device(next(unet.parameters()).device):
        net = make_controlnet(controlnet_config_from_unet(dict(unet.config), processor_channels))
    prefixes = ("conv_in.", "time_proj.", "time_embedding.", "down_blocks.", "mid_block.")
    source = {k: v for k, v in unet.state_dict().items() if k.startswith(prefixes)}
    missing, unexpected = net.load_state_dict(source, strict=False)
    not_copied = [
        k
        for k in missing
        if not k.startswith(("controlnet_cond_embedding.", "controlnet_down_blocks.", "controlnet_mid_block."))
    ]
    if not_copied or unexpected:
        raise RuntimeError(f"UNet -> ControlNet copy mismatch: missing {not_copied[:5]}, unexpected {unexpected[:5]}")
    dtype = next(unet.parameters()).dtype
    return net.to(dtype=dtype) if any(p.dtype != dtype for p in net.parameters()) else net
