"""Model FLOPs of a restore, counted on the real modules with ``torch.utils.flop_counter``.

Counted: matrix multiplies, convolutions and attention (the operators torch's counter knows, which carry
nearly all the work); elementwise ops, norms and the scheduler are not. Divide by a measured time to get
the achieved FLOP/s, and by a card's peak to get its utilisation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from ..models.fast_paths import FastPaths

aten = torch.ops.aten


def _cpu_flash_sdpa_flop(query_shape, key_shape, value_shape, *args: Any, out_shape=None, **kwargs: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _custom_mapping() -> dict[Any, Callable[..., int]]:
    """Operators torch's counter does not register (yet): the CPU flash-attention kernel."""
    mapping: dict[Any, Callable[..., int]] = {}
    op = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        mapping[op] = _cpu_flash_sdpa_flop
    return mapping


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs (multiply-add = 2) that ``fn()`` runs through the counted operators."""
    with FlopCounterMode(display=False, custom_mapping=_custom_mapping()) as counter:
        fn()
    return int(counter.get_total_flops())


def restore_flops(pipe: Any, size: int, steps: int, cfg: float, caption: str) -> dict[str, Any]:
    """FLOPs of one untiled restore of a ``size`` px square: per CFG step, per prior, and per image.

    ``pipe`` is a :class:`sspir_core.restore.pipeline.RestorePipeline`. Runs each stage once (one denoising step).
    Tiling adds the overlaps' work on top (about (tile / (tile - overlap))^2 for the steps).
    """
    from ..restore.pipeline import RestoreOptions

    g = torch.Generator().manual_seed(0)
    lq = torch.rand(1, 3, size, size, generator=g).to(pipe.device)
    options = RestoreOptions(steps=1, cfg=cfg, tile=None, vae_tile=None)
    gens = [torch.Generator(device=pipe.device).manual_seed(0)]
    parts: dict[str, int] = {}
    box: dict[str, Any] = {}

    def text() -> None:
        box["text"] = pipe.encode_text([caption], options.negative_prompt, options.max_chunks)

    def image() -> None:
        box["image"] = pipe.encode_image(lq)

    def processor() -> None:
        box["features"] = pipe.structure_prior(lq, return_rgbs=False)[0]

    def vae_encode() -> None:
        box["latents"] = pipe.vae_encode(lq, gens, None)

    for name, fn in (("text", text), ("clip_refine", image), ("processor", processor), ("vae_encode", vae_encode)):
        parts[name] = count_flops(fn)
    pos, neg = box["text"]

    def one_step(paths: FastPaths) -> None:
        pipe.denoise(box["latents"].float(), pos, neg, box["image"], box["features"], options, gens, paths=paths)

    step = count_flops(lambda: one_step(FastPaths()))
    step_plain = count_flops(lambda: one_step(FastPaths.none()))
    parts["vae_decode"] = count_flops(lambda: pipe.vae_decode(box["latents"], None))
    once = sum(parts.values())
    return {
        "size_px": size,
        "cfg_batch": 2 if cfg != 1.0 else 1,
        "step_flops": step,
        "step_flops_plain": step_plain,
        "parts_flops": parts,
        "steps": steps,
        "image_flops": steps * step + once,
        "once_flops": once,
    }
