"""SSP-IR long-prompt encoding (captions longer than CLIP's 77-token window).

MLLM captions run to hundreds of tokens, and SSP-IR was trained with them encoded by the official chunking
scheme, so inference must reproduce it exactly (ComfyUI's and diffusers' own schemes differ):

1. tokenise without BOS/EOS and truncate to ``75 * max_chunks`` (= 300) tokens;
2. the chunk count ``m = max(1, min(max_chunks, ceil(n / 75)))`` is decided by the LONGEST prompt of the
   batch, so every prompt of a batch gets the same length;
3. each prompt becomes ``[BOS] + tokens + [PAD] * (75m - n) + [EOS]`` (length ``75m + 2``), with PAD the
   tokenizer's ``pad_token_id`` (49407 = EOS for SD1.5, 0 = ``"!"`` for SD2.x);
4. for ``m > 1`` chunk ``i`` is ``ids[:, 75i : 75i + 77]`` with its first id forced to BOS and its last to EOS;
   each chunk goes through the text encoder (``last_hidden_state``) and the outputs are concatenated, the
   first chunk losing its last position, middle chunks their first and last, the last chunk its first.
   For ``m == 1`` the 77 ids are encoded as they are.

The result has ``75m + 2`` positions: 77, 152, 227 or 302.

The negative (unconditional) prompt follows the official inference code, which lays it out differently: the
tokenizer's own ``max_length`` padding to the positive's length, ``[BOS] + tokens + [EOS] + [PAD]*``, cut to
that length when longer (a negative never lengthens the caption). Chunk boundaries are then forced to BOS and
to the row's own last id, which is EOS for SD1.x (PAD = EOS, so both layouts coincide) but ``"!"`` for SD2.x.

Every prompt's layout depends only on itself and on the caption it belongs to: a batch whose captions need
different chunk counts must be encoded (and sampled) in groups of equal count (:func:`group_by_chunks`), so
that each image gets what it gets alone.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InputError

log = logging.getLogger(__name__)

CHUNK_TOKENS = 75
"""Content tokens per chunk; with BOS and EOS a chunk fills CLIP's 77-position window."""
DEFAULT_MAX_CHUNKS = 4
"""The official code caps captions at 4 chunks (300 content tokens)."""


@dataclass(frozen=True)
class LongTokens:
    """Token ids laid out for :func:`encode_tokens`: ``input_ids`` is ``[B, 75 * num_chunks + 2]`` (long).

    Every chunk boundary is overwritten with each row's own first id (BOS) and last id before encoding.
    """

    input_ids: torch.Tensor
    num_chunks: int
    bos_id: int
    eos_id: int

    @property
    def length(self) -> int:
        """Number of positions the encoded prompt will have (``75 * num_chunks + 2``)."""
        return CHUNK_TOKENS * self.num_chunks + 2


def _as_prompt_list(prompts: str | Sequence[str], what: str = "prompt") -> list[str]:
    """Accept one string or a sequence of strings (ComfyUI captioners hand over either)."""
    if isinstance(prompts, str):
        return [prompts]
    items = list(prompts)
    if not items:
        raise InputError(f'no {what} given: pass at least one string (use "" for an empty {what})')
    for i, p in enumerate(items):
        if not isinstance(p, str):
            raise InputError(f"{what} {i} is a {type(p).__name__}, expected a string")
    return items


def _special_ids(tokenizer: Any) -> tuple[int, int, int]:
    """(BOS, EOS, PAD) of a transformers-style CLIP tokenizer; PAD falls back to EOS when unset."""
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    if bos is None or eos is None:
        raise InputError("the tokenizer has no BOS/EOS token: expected a CLIP tokenizer")
    return int(bos), int(eos), int(eos if pad is None else pad)


def tokenize_long(
    tokenizer: Any,
    prompts: str | Sequence[str],
    max_chunks: int = DEFAULT_MAX_CHUNKS,
    min_chunks: int = 1,
) -> LongTokens:
    """Tokenise ``prompts`` into the SSP-IR layout ``[BOS] + tokens + [PAD]* + [EOS]``, all the same length.

    ``min_chunks`` lets a caller force a length (e.g. to match another batch); the chunk count is still capped
    by ``max_chunks``.
    """
    if max_chunks < 1 or min_chunks < 1:
        raise InputError(f"max_chunks and min_chunks must be >= 1, got {max_chunks} and {min_chunks}")
    items = _as_prompt_list(prompts)
    bos, eos, pad = _special_ids(tokenizer)
    limit = CHUNK_TOKENS * max_chunks
    # truncation=True with max_length keeps transformers from warning about sequences over 77 tokens.
    enc = tokenizer(items, add_special_tokens=False, truncation=True, max_length=limit)
    token_lists = [list(ids)[:limit] for ids in enc["input_ids"]]
    longest = max(len(t) for t in token_lists)
    num_chunks = max(1, min_chunks, min(max_chunks, math.ceil(longest / CHUNK_TOKENS)))
    num_chunks = min(num_chunks, max_chunks)
    width = CHUNK_TOKENS * num_chunks
    rows = [[bos] + t + [pad] * (width - len(t)) + [eos] for t in token_lists]
    return LongTokens(torch.tensor(rows, dtype=torch.long), num_chunks, bos, eos)


def warn_cut_prompts(
    tokenizer: Any, prompts: Sequence[str], max_chunks: int = DEFAULT_MAX_CHUNKS, what: str = "caption"
) -> list[tuple[int, int, int]]:
    """Log a warning for every prompt longer than ``max_chunks`` chunks (only its first ``75 * max_chunks``
    tokens are encoded, as in the official code); returns ``(index, tokens kept, tokens in all)`` of each."""
    limit = CHUNK_TOKENS * max_chunks
    items = _as_prompt_list(prompts, what)
    # one token past the limit tells a cut cheaply; only the cut ones are counted in full
    enc = tokenizer(items, add_special_tokens=False, truncation=True, max_length=limit + 1)
    cut = []
    for i, (text, ids) in enumerate(zip(items, enc["input_ids"])):
        if len(ids) > limit:
            total = len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
            cut.append((i, limit, total))
            log.warning(
                "%s %d (%d characters, starting %r) has %d tokens: only the first %d are used (%d chunks "
                "of %d, as SSP-IR was trained); the other %d are ignored",
                what,
                i + 1,
                len(text),
                text[:40],
                total,
                limit,
                max_chunks,
                CHUNK_TOKENS,
                total - limit,
            )
    return cut


def chunk_count(tokenizer: Any, prompt: str, max_chunks: int = DEFAULT_MAX_CHUNKS) -> int:
    """How many 75-token chunks ``prompt`` needs on its own (1 to ``max_chunks``)."""
    return tokenize_long(tokenizer, [prompt], max_chunks).num_chunks


def group_by_chunks(tokenizer: Any, prompts: Sequence[str], max_chunks: int = DEFAULT_MAX_CHUNKS) -> list[list[int]]:
    """Indices of ``prompts`` grouped by chunk count, in first-seen order: each group encodes to one length
    without padding any prompt beyond what it needs alone."""
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(_as_prompt_list(prompts)):
        groups.setdefault(chunk_count(tokenizer, p, max_chunks), []).append(i)
    return list(groups.values())


def tokenize_negative(tokenizer: Any, prompts: str | Sequence[str], length: int) -> LongTokens:
    """Lay out negative prompts as the official inference code does, for positives of ``length`` positions.

    ``[BOS] + tokens + [EOS] + [PAD]*``, exactly ``length`` long; a longer negative is cut to
    ``length - 2`` tokens (it never changes the caption's length).
    """
    if length < CHUNK_TOKENS + 2 or (length - 2) % CHUNK_TOKENS:
        raise InputError(f"negative prompt length must be 75 * chunks + 2, got {length}")
    items = _as_prompt_list(prompts, "negative prompt")
    bos, eos, pad = _special_ids(tokenizer)
    room = length - 2
    rows = []
    # max_length one past the room: enough to notice a cut, and no transformers warning about > 77 tokens
    enc = tokenizer(items, add_special_tokens=False, truncation=True, max_length=room + 1)
    for text, ids in zip(items, enc["input_ids"]):
        ids = list(ids)
        if len(ids) > room:
            log.warning(
                "negative prompt %r is longer than the caption (%d tokens): cut to that length, as the "
                "official code does",
                text[:40],
                room,
            )
            ids = ids[:room]
        rows.append([bos] + ids + [eos] + [pad] * (room - len(ids)))
    return LongTokens(torch.tensor(rows, dtype=torch.long), (length - 2) // CHUNK_TOKENS, bos, eos)


def _encoder_device(text_encoder: Any) -> torch.device | None:
    device = getattr(text_encoder, "device", None)
    if device is not None:
        return torch.device(device)
    try:
        return next(text_encoder.parameters()).device
    except (AttributeError, StopIteration):
        return None


def encode_tokens(text_encoder: Any, tokens: LongTokens, device: torch.device | str | None = None) -> torch.Tensor:
    """Encode laid-out ids chunk by chunk and stitch them: ``[B, 75m + 2, D]``.

    All chunks of all prompts go through the encoder as one batch of 77-id rows (same result as one call per
    chunk, fewer calls). Gradients are left to the caller (wrap in ``torch.no_grad()`` for inference).
    """
    ids = tokens.input_ids
    if device is None:
        device = _encoder_device(text_encoder)
    if device is not None:
        ids = ids.to(device)
    if tokens.num_chunks == 1:
        return text_encoder(ids)[0]
    hidden = text_encoder(chunk_windows(ids, tokens.num_chunks))[0]
    return join_chunks(hidden, tokens.num_chunks, ids.shape[0])


def chunk_windows(ids: torch.Tensor, num_chunks: int) -> torch.Tensor:
    """The 77-id rows the encoder sees: ``[num_chunks * B, 77]``, chunk-major (chunk i of every prompt, then i+1).

    Chunk ``i`` is ``ids[:, 75i : 75i + 77]`` with its first id forced to the row's first (BOS) and its last
    to the row's last id. With one chunk the ids are returned as they are.
    """
    if num_chunks == 1:
        return ids
    first, last = ids[:, 0], ids[:, -1]  # BOS, and EOS (positives) or the negative's own last id
    window = CHUNK_TOKENS + 2
    chunks = []
    for i in range(num_chunks):
        chunk = ids[:, i * CHUNK_TOKENS : i * CHUNK_TOKENS + window].clone()
        chunk[:, 0] = first
        chunk[:, -1] = last
        chunks.append(chunk)
    return torch.cat(chunks, dim=0)


def join_chunks(hidden: torch.Tensor, num_chunks: int, batch: int) -> torch.Tensor:
    """Stitch encoder outputs of :func:`chunk_windows` rows (``[num_chunks * B, 77, D]``) into ``[B, 75m + 2, D]``.

    The official join: the first chunk loses its last position, middle chunks their first and last, the last
    chunk its first.
    """
    if num_chunks == 1:
        return hidden
    window = CHUNK_TOKENS + 2
    parts = []
    for i in range(num_chunks):
        h = hidden[i * batch : (i + 1) * batch]
        start = 0 if i == 0 else 1
        stop = window if i == num_chunks - 1 else window - 1
        parts.append(h[:, start:stop])
    return torch.cat(parts, dim=1)


def encode_long_prompt(
    text_encoder: Any,
    tokenizer: Any,
    prompts: str | Sequence[str],
    max_chunks: int = DEFAULT_MAX_CHUNKS,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Encode captions the SSP-IR way; returns ``[B, 75m + 2, D]`` (m chunks, from the longest prompt)."""
    return encode_tokens(text_encoder, tokenize_long(tokenizer, prompts, max_chunks), device)


def encode_prompt_pair(
    text_encoder: Any,
    tokenizer: Any,
    positive: str | Sequence[str],
    negative: str | Sequence[str] = "",
    max_chunks: int = DEFAULT_MAX_CHUNKS,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode positive and negative prompts to the SAME length, as classifier-free guidance needs.

    The length comes from the positives alone (their longest); each negative is laid out by
    :func:`tokenize_negative` to that length, as the official code does. A single negative is repeated for
    every positive prompt. For batch-independent results give positives of one chunk count
    (:func:`group_by_chunks`).
    """
    pos = _as_prompt_list(positive, "positive prompt")
    neg = _as_prompt_list(negative, "negative prompt")
    if len(neg) == 1 and len(pos) > 1:
        neg = neg * len(pos)
    if len(neg) != len(pos):
        raise InputError(
            f"got {len(pos)} positive prompts but {len(neg)} negative prompts: give one negative or one per positive"
        )
    pos_tokens = tokenize_long(tokenizer, pos, max_chunks)
    neg_tokens = tokenize_negative(tokenizer, neg, pos_tokens.length)
    both = LongTokens(
        torch.cat([pos_tokens.input_ids, neg_tokens.input_ids]),
        pos_tokens.num_chunks,
        pos_tokens.bos_id,
        pos_tokens.eos_id,
    )
    embeds = encode_tokens(text_encoder, both, device)
    return embeds[: len(pos)], embeds[len(pos) :]
