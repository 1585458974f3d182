"""SSP-IR's long-prompt layout for a host text encoder that takes 77-id windows (ComfyUI's CLIP).

The host encodes each 77-id window as it would any prompt section and concatenates the outputs (77 positions
per window); the official join (:func:`sspir_core.restore.prompt.join_chunks`) then drops the boundary positions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import InputError
from ..restore.prompt import (
    CHUNK_TOKENS,
    LongTokens,
    chunk_windows,
    join_chunks,
    tokenize_long,
    tokenize_negative,
    warn_cut_prompts,
)

WINDOW = CHUNK_TOKENS + 2


class TokenizerIds:
    """A transformers tokenizer with the host's own BOS/EOS/PAD ids (ComfyUI pads SD2 with 0, not EOS)."""

    def __init__(self, tokenizer: Any, bos: int, eos: int, pad: int) -> None:
        self._tokenizer = tokenizer
        self.bos_token_id, self.eos_token_id, self.pad_token_id = int(bos), int(eos), int(pad)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._tokenizer(*args, **kwargs)


MIXED_LENGTHS = ("pad to longest", "refuse")
"""What SSP-IR Text Encode does with a batch whose captions need different chunk counts (first: the default)."""


def layout_pair(
    tokenizer: Any, captions: Sequence[str], negative: str, max_chunks: int, mixed: str = MIXED_LENGTHS[0]
) -> tuple[LongTokens, LongTokens]:
    """Positive and negative ids laid out as the official code does, one chunk count for the batch.

    One CONDITIONING holds one length. ``mixed`` says what to do when the captions need different chunk counts:
    ``"pad to longest"`` gives every caption the batch's longest count, which is the official code's own batched
    layout (its tokenizer pads a batch to its longest prompt), so a shorter caption's image differs from the one
    it gets alone; ``"refuse"`` raises instead (PGA Sampler samples each chunk count apart).
    """
    if mixed not in MIXED_LENGTHS:
        raise InputError(f"mixed lengths must be one of {', '.join(MIXED_LENGTHS)}; got {mixed!r}")
    warn_cut_prompts(tokenizer, captions, max_chunks)  # the same log line as the reference route's
    counts = [tokenize_long(tokenizer, [c], max_chunks).num_chunks for c in captions]
    if len(set(counts)) > 1 and mixed == "refuse":
        raise InputError(
            f"the captions need different numbers of 75-token chunks ({', '.join(map(str, counts))}); one "
            "CONDITIONING holds one length, and padding a caption changes its image. Set mixed_lengths to "
            "'pad to longest' (the official code's batched layout), restore these images in separate prompts, or "
            "use PGA Sampler (it samples each chunk count apart)."
        )
    pos = tokenize_long(tokenizer, list(captions), max_chunks)
    neg = tokenize_negative(tokenizer, [negative] * len(captions), pos.length)
    return pos, neg


def encode_windows(tokens: LongTokens, encode: Callable[[list[list[int]]], torch.Tensor]) -> torch.Tensor:
    """``[B, 75m + 2, D]`` from a host ``encode(windows) -> [1, 77 * len(windows), D]`` called once per prompt."""
    m = tokens.num_chunks
    rows = []
    for b in range(tokens.input_ids.shape[0]):
        windows = chunk_windows(tokens.input_ids[b : b + 1], m)
        hidden = encode([w.tolist() for w in windows])
        if hidden.shape[-2] != WINDOW * m:
            raise InputError(f"the text encoder returned {hidden.shape[-2]} positions for {m} windows of {WINDOW} ids")
        rows.append(join_chunks(hidden.reshape(m, WINDOW, hidden.shape[-1]), m, 1))
    return torch.cat(rows)
