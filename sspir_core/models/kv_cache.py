"""Reuse the key/value projections of contexts that stay the same over a whole restore.

The text embedding and the Refine-layer image embedding do not change over the 50 denoising steps nor
between tiles, yet every text and image cross-attention projects them to keys and values at every call.
Inside :func:`context_kv_cache` those attentions run :class:`CachedKVProcessor`, which computes K/V for a
context tensor once and reuses them while the same tensor (same object, or the same view of the same
storage, with the same in-place version) comes back.

Exactness: the cached K/V are the very tensors the plain path would compute, so outputs are bitwise those
of diffusers' ``AttnProcessor2_0``. Safety: only inference is cached (with autograd on, the plain path
runs, so training and gradients are untouched); the cache holds a reference to each context, so a freed
tensor's id can never be mistaken for a new one; leaving the context manager puts the original processors
back and drops every cached tensor. Pixel attentions are never cached: their context (a ControlNet
residual) changes at every step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

# Transformer stages whose cross-attention context is constant over a restore (text, image embedding).
CONSTANT_CONTEXT_STAGES = ("attentions", "image_attentions")


def _version(t: torch.Tensor) -> int | None:
    """In-place version of ``t``; None for an inference tensor (made under ``torch.inference_mode``, as ComfyUI
    runs its nodes), which tracks none: such a context is matched by identity alone, so code that opens the
    cache must not change its contexts in place inside it (the pipeline builds them fresh for its loop)."""
    return None if t.is_inference() else t._version


def _same_view(a: torch.Tensor | None, b: torch.Tensor) -> bool:
    """``b`` is ``a`` or the same view of the same storage (e.g. ``image[:1]`` sliced again at every step).

    Safe for the same reason identity is: the cache holds ``a``, so its storage cannot be freed and reused,
    and views share their base's in-place version counter.
    """
    if a is b:
        return True
    return (
        a is not None
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.dtype == b.dtype
        and a.device == b.device
        and a.storage_offset() == b.storage_offset()
        and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    )


class CachedKVProcessor:
    """``AttnProcessor2_0`` for plain cross-attention, with K/V kept per context tensor.

    Anything this processor is not written for (self-attention, masks, spatial norm, q/k norms, autograd
    on) goes to the wrapped ``fallback`` processor unchanged.
    """

    def __init__(self, fallback: AttnProcessor2_0):
        self.fallback = fallback
        self._context: torch.Tensor | None = None
        self._version: int | None = -1
        self._kv: tuple[torch.Tensor, torch.Tensor] | None = None
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        self._context, self._kv, self._version = None, None, -1

    def _usable(
        self,
        attn: Attention,
        encoder_hidden_states: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        temb: torch.Tensor | None,
    ) -> bool:
        return (
            encoder_hidden_states is not None
            and attention_mask is None
            and temb is None
            and attn.spatial_norm is None
            and attn.group_norm is None
            and attn.norm_q is None
            and attn.norm_k is None
            and not attn.residual_connection
            and attn.rescale_output_factor == 1.0
            and not torch.is_grad_enabled()
        )

    def _keys_values(self, attn: Attention, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        version = _version(context)
        if self._kv is not None and _same_view(self._context, context) and self._version == version:
            self.hits += 1
            return self._kv
        self.misses += 1
        ctx = attn.norm_encoder_hidden_states(context) if attn.norm_cross else context
        b = ctx.shape[0]
        key, value = attn.to_k(ctx), attn.to_v(ctx)
        head_dim = key.shape[-1] // attn.heads
        key = key.view(b, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(b, -1, attn.heads, head_dim).transpose(1, 2)
        self._context, self._version, self._kv = context, version, (key, value)
        return key, value

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: object,
        **kwargs: object,
    ) -> torch.Tensor:
        if args or not self._usable(attn, encoder_hidden_states, attention_mask, temb) or hidden_states.ndim != 3:
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        assert encoder_hidden_states is not None
        key, value = self._keys_values(attn, encoder_hidden_states)
        b = hidden_states.shape[0]
        if key.shape[0] != b:  # a context batch that does not match: never guess, run the plain path
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        head_dim = key.shape[-1]
        query = attn.to_q(hidden_states).view(b, -1, attn.heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(b, -1, attn.heads * head_dim).to(query.dtype)
        return attn.to_out[1](attn.to_out[0](out))


def constant_context_attentions(*models: nn.Module) -> list[Attention]:
    """The cross-attentions (``attn2``) of the text and image transformer stages of ``models``."""
    found: list[Attention] = []
    for model in models:
        for name, module in model.named_modules():
            parts = name.split(".")
            if (
                isinstance(module, Attention)
                and parts[-1] == "attn2"
                and any(stage in parts for stage in CONSTANT_CONTEXT_STAGES)
            ):
                found.append(module)
    return found


@contextlib.contextmanager
def context_kv_cache(*models: nn.Module, enabled: bool = True) -> Iterator[list[CachedKVProcessor]]:
    """Within the block, text and image cross-attentions of ``models`` reuse K/V per context tensor.

    Only attentions running diffusers' default ``AttnProcessor2_0`` are switched (a user's own processor,
    e.g. xformers, is left alone). Yields the installed processors (hit/miss counters, for tests).
    """
    installed: list[tuple[Attention, object, CachedKVProcessor]] = []
    if enabled:
        for attn in constant_context_attentions(*models):
            if type(attn.processor) is AttnProcessor2_0:
                cached = CachedKVProcessor(attn.processor)
                installed.append((attn, attn.processor, cached))
                attn.processor = cached  # set directly: set_processor would log and drop nothing else
    try:
        yield [c for _, _, c in installed]
    finally:
        for attn, original, cached in installed:
            attn.processor = original
            cached.clear()
