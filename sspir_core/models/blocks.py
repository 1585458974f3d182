"""Building and running the SSP-IR attention stages inside diffusers' UNet blocks.

One source of truth for (1) how each new attention is shaped and (2) the order in which a
layer runs its modules, shared by the UNet and the ControlNet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.utils.checkpoint
from diffusers import Transformer2DModel
from torch import nn

from .refine import IMAGE_CONTEXT_DIM


def per_level(value: int | Sequence[int], levels: int) -> list[int]:
    """Expand a diffusers per-level setting (int or list) to one value per resolution level."""
    if isinstance(value, int):
        return [value] * levels
    values = list(value)
    if len(values) != levels:
        raise ValueError(f"expected {levels} per-level values, got {values}")
    return values


def heads_per_level(config: Mapping[str, Any]) -> list[int]:
    """Number of attention heads per level. diffusers' `attention_head_dim` holds the HEAD COUNT here."""
    heads = config.get("num_attention_heads")
    if heads is None:
        heads = config.get("attention_head_dim", 8)
    return per_level(heads, len(config["block_out_channels"]))


def prior_attention(
    channels: int,
    heads: int,
    context_dim: int,
    groups: int,
    linear: bool,
    depth: int = 1,
    upcast: bool = False,
) -> Transformer2DModel:
    """A full Transformer2DModel (GroupNorm, proj_in, self-attn, cross-attn, GEGLU FF, proj_out, residual)."""
    return Transformer2DModel(
        num_attention_heads=heads,
        attention_head_dim=channels // heads,
        in_channels=channels,
        num_layers=depth,
        cross_attention_dim=context_dim,
        norm_num_groups=groups,
        use_linear_projection=linear,
        upcast_attention=upcast,
    )


def image_attentions_for(block: nn.Module, channels: int, heads: int, depth: int, config: Any) -> nn.ModuleList:
    """One image attention (context = Refine-layer embedding) per text attention of a block."""
    return nn.ModuleList(
        prior_attention(
            channels,
            heads,
            IMAGE_CONTEXT_DIM,
            config.norm_num_groups,
            config.use_linear_projection,
            depth,
            config.upcast_attention,
        )
        for _ in block.attentions
    )


def flatten_context(x: torch.Tensor) -> torch.Tensor:
    """``b c h w -> b (h w) c``: a ControlNet residual as a token sequence for pixel attention."""
    return x.flatten(2).transpose(1, 2)


def _call(module: nn.Module, checkpoint: bool, *args: torch.Tensor | None) -> torch.Tensor:
    if checkpoint and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(module, *args, use_reentrant=False)
    return module(*args)


def _attend(attn: nn.Module, h: torch.Tensor, context: torch.Tensor | None, checkpoint: bool) -> torch.Tensor:
    if checkpoint and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(
            lambda x, c: attn(x, encoder_hidden_states=c, return_dict=False)[0], h, context, use_reentrant=False
        )
    return attn(h, encoder_hidden_states=context, return_dict=False)[0]


def _semantic_attentions(
    block: nn.Module, j: int, h: torch.Tensor, text: torch.Tensor, image: torch.Tensor | None, checkpoint: bool
) -> torch.Tensor:
    """image attention (if the block has one) then the SD self+text attention."""
    image_attentions = getattr(block, "image_attentions", None)
    if image_attentions is not None:
        if image is None:
            raise ValueError(
                "this model has image attentions: pass image_encoder_hidden_states (the Refine-layer output)"
            )
        h = _attend(image_attentions[j], h, first_rows(image, h.shape[0]), checkpoint)
    return _attend(block.attentions[j], h if text is None else widen(h, text.shape[0]), text, checkpoint)


def check_shared_batch(sample: torch.Tensor, text: torch.Tensor) -> None:
    """A latent batch B with a context batch k*B is the shared-prefix convention (see :func:`run_down_blocks`)."""
    b, n = sample.shape[0], text.shape[0]
    if n != b and (b == 0 or n % b != 0):
        raise ValueError(
            f"sample batch {b} and encoder_hidden_states batch {n}: give equal batches, or a context "
            f"batch that is a multiple of the sample batch (CFG copies sharing one latent)"
        )


def widen(x: torch.Tensor, n: int) -> torch.Tensor:
    """Repeat a batch of B to n = k*B rows, in the order ``torch.cat([x] * k)`` (the CFG layout)."""
    return x if x.shape[0] == n else x.repeat(n // x.shape[0], *([1] * (x.dim() - 1)))


def first_rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """The first n rows of a batch whose k copies are equal (image embedding, time embedding)."""
    return x if x.shape[0] == n else x[:n]


def run_down_blocks(
    blocks: Sequence[nn.Module],
    h: torch.Tensor,
    temb: torch.Tensor,
    text: torch.Tensor,
    image: torch.Tensor | None,
    checkpoint: bool = False,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Down path: per layer ``resnet -> [image_attn -> attn]``; returns h and the skip features (conv_in first).

    Shared prefix: ``h`` may hold B rows while ``text`` and ``temb`` hold k*B (k CFG copies whose latent,
    image embedding and structure prior are the same, in the ``cat([x] * k)`` layout). Everything before
    the first text attention then runs on the B rows once; ``h`` is repeated to k*B there, and so are the
    skips taken before it. ``image`` may hold B or k*B rows (its first B are used before the repeat).
    """
    n = text.shape[0] if text is not None else h.shape[0]
    skips = [h]
    for block in blocks:
        has_attn = getattr(block, "attentions", None) is not None
        for j, resnet in enumerate(block.resnets):
            h = _call(resnet, checkpoint, h, first_rows(temb, h.shape[0]))
            if has_attn:
                h = _semantic_attentions(block, j, h, text, image, checkpoint)
            skips.append(h)
        if block.downsamplers is not None:
            for down in block.downsamplers:
                h = down(h)
            skips.append(h)
    return widen(h, n), [widen(s, n) for s in skips]


def run_mid_block(
    mid: nn.Module,
    h: torch.Tensor,
    temb: torch.Tensor,
    text: torch.Tensor,
    image: torch.Tensor | None,
    checkpoint: bool = False,
) -> torch.Tensor:
    """Mid block: ``resnets[0] -> image_attn -> attn -> resnets[1]``."""
    h = _call(mid.resnets[0], checkpoint, h, temb)
    for j, resnet in enumerate(mid.resnets[1:]):
        h = _semantic_attentions(mid, j, h, text, image, checkpoint)
        h = _call(resnet, checkpoint, h, temb)
    return h


def run_up_block(
    block: nn.Module,
    h: torch.Tensor,
    skips: Sequence[torch.Tensor],
    pixel_contexts: Sequence[torch.Tensor | None],
    temb: torch.Tensor,
    text: torch.Tensor,
    image: torch.Tensor | None,
    upsample_size: Sequence[int] | None = None,
    checkpoint: bool = False,
) -> torch.Tensor:
    """Up block: per layer ``cat(h, skip) -> resnet -> [image_attn -> attn] -> pixel_attn``, then upsample.

    ``skips`` and ``pixel_contexts`` hold this block's entries in down-path order; they are consumed
    from the end, so the pixel attention of a layer sees the ControlNet residual with the same index
    as the skip it concatenates.
    """
    has_attn = getattr(block, "attentions", None) is not None
    pixel_attentions = getattr(block, "pixel_attentions", None)
    n = len(block.resnets)
    for j, resnet in enumerate(block.resnets):
        h = torch.cat([h, skips[n - 1 - j]], dim=1)
        h = _call(resnet, checkpoint, h, temb)
        if has_attn:
            h = _semantic_attentions(block, j, h, text, image, checkpoint)
        if pixel_attentions is not None:
            context = pixel_contexts[n - 1 - j]
            if context is None:
                context = torch.zeros_like(skips[n - 1 - j])
            h = _attend(pixel_attentions[j], h, flatten_context(context), checkpoint)
    if block.upsamplers is not None:
        for up in block.upsamplers:
            h = up(h, upsample_size)
    return h


def reject_unused(kwargs: dict[str, Any], owner: str) -> None:
    """Accept the diffusers call style (``return_dict=``, None-valued extras) but refuse inputs we would ignore."""
    extra = sorted(k for k, v in kwargs.items() if v is not None and k != "return_dict")
    if extra:
        raise TypeError(f"{owner}.forward does not support {extra}")


def time_embedding(
    model: nn.Module, sample: torch.Tensor, timestep: torch.Tensor | float | int, batch: int | None = None
) -> torch.Tensor:
    """Sinusoidal projection + MLP, broadcast to ``batch`` rows (default: the sample's; per-sample timesteps
    allowed, repeated like the sample when ``batch`` is a multiple of it)."""
    t = timestep
    if not torch.is_tensor(t):
        is_float = isinstance(t, float)
        dtype = (torch.float32 if sample.device.type == "mps" else torch.float64) if is_float else torch.int64
        t = torch.tensor([t], dtype=dtype, device=sample.device)
    elif t.ndim == 0:
        t = t[None]
    t = t.to(sample.device)
    n = sample.shape[0] if batch is None else batch
    t = t.expand(n) if t.numel() == 1 else widen(t, n)
    t_emb = model.time_proj(t).to(dtype=sample.dtype)
    return model.time_embedding(t_emb)


UNSUPPORTED_CONFIG = {
    "class_embed_type": None,
    "addition_embed_type": None,
    "encoder_hid_dim_type": None,
    "time_cond_proj_dim": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "dual_cross_attention": False,
    "resnet_time_scale_shift": "default",
}


def check_supported(config: Any, what: str) -> None:
    """SSP-IR is defined for SD1.x/2.x-style UNets; refuse configs whose extra inputs we would ignore."""
    for key, default in UNSUPPORTED_CONFIG.items():
        value = config.get(key, default) if isinstance(config, dict) else getattr(config, key, default)
        if value not in (default, [default] * 8) and not (isinstance(value, list) and all(v == default for v in value)):
            raise ValueError(f"{what}: config {key}={value!r} is not supported by SSP-IR (expected {default!r})")
