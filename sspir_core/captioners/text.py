"""Caption text hygiene: one clean line per image, and the str / list[str] contract nodes rely on.

Captioners always return ``list[str]`` (one per image). Downstream code that needs a single string
uses :func:`select_caption` or :func:`join_captions` explicitly, so a list never leaks into a STRING socket.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..errors import InputError

# Special tokens that chat models emit and that some tokenizers do not mark as special.
_SPECIAL_TOKEN_RE = re.compile(
    r"<\|[^|<>\s]{1,40}\|>"  # <|im_end|>, <|endoftext|>, <|image_pad|>, <|eot_id|> ...
    r"|</?s>|<pad>|<unk>|<image>|<video>|\[PAD\]|\[UNK\]|\[CLS\]|\[SEP\]|\[MASK\]|\[DEC\]"
    r"|<start_of_turn>|<end_of_turn>|<bos>|<eos>"
)
_WHITESPACE_RE = re.compile(r"\s+")
# Control characters and U+FFFD (undecodable bytes from a byte-level tokenizer) are never caption text.
_JUNK_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd]")


def clean_caption(text: str) -> str:
    """Remove special tokens, turn newlines into spaces and collapse whitespace.

    The paper strips newlines from LLaVA's output; prompt encoders downstream treat the caption as one line.
    """
    if not isinstance(text, str):
        raise InputError(f"a caption must be a str, got {type(text).__name__}")
    text = _SPECIAL_TOKEN_RE.sub(" ", text)
    text = _JUNK_RE.sub("", text)
    return _WHITESPACE_RE.sub(" ", text).strip()


def normalize_captions(captions: str | Sequence[str] | None, batch_size: int) -> list[str]:
    """Turn a caption input (one string, or one per image) into exactly ``batch_size`` clean strings.

    A single string (or a one-element list) is shared by every image; otherwise the length must match.
    """
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    if captions is None:
        return [""] * batch_size
    if isinstance(captions, str):
        return [clean_caption(captions)] * batch_size
    items = list(captions)
    if not all(isinstance(c, str) for c in items):
        raise InputError("captions must be strings (a str, or a list with one str per image)")
    if len(items) == 1:
        return [clean_caption(items[0])] * batch_size
    if len(items) != batch_size:
        raise InputError(f"got {len(items)} captions for {batch_size} images: give one caption, or one per image")
    return [clean_caption(c) for c in items]


def select_caption(captions: Sequence[str], index: int) -> str:
    """The caption for image ``index`` of a batch; a single caption applies to every image."""
    if isinstance(captions, str):
        return captions
    if not captions:
        raise InputError("no captions to select from")
    if len(captions) == 1:
        return captions[0]
    if not -len(captions) <= index < len(captions):
        raise InputError(f"caption index {index} is out of range for {len(captions)} captions")
    return captions[index]


def join_captions(captions: Sequence[str], separator: str = " ") -> str:
    """All captions as one string (e.g. for a display widget); empty captions are skipped."""
    if isinstance(captions, str):
        return captions
    return separator.join(c for c in captions if c)
