"""Semantic prior: swappable captioners (images in, one clean caption per image out).

``get_captioner(name, **options).caption(images) -> list[str]``, always one string per image; use
:func:`select_caption` / :func:`join_captions` where a single string is needed. Heavy libraries
(torch, transformers) load only when a model runs.
"""

from .base import DEFAULT_CACHE, PAPER_PROMPT, Captioner, CaptionerError
from .blip import BlipCaptioner
from .cache import CaptionCache, default_cache_dir
from .florence2 import Florence2Captioner
from .images import image_digest, to_pil_images
from .llava import LlavaCaptioner
from .openai_api import OpenAICaptioner
from .qwen_vl import QwenVLCaptioner
from .registry import ALIASES, CAPTIONERS, get_captioner
from .text import clean_caption, join_captions, normalize_captions, select_caption
from .typed import TextCaptioner

__all__ = [
    "ALIASES",
    "CAPTIONERS",
    "DEFAULT_CACHE",
    "PAPER_PROMPT",
    "BlipCaptioner",
    "CaptionCache",
    "Captioner",
    "CaptionerError",
    "Florence2Captioner",
    "LlavaCaptioner",
    "OpenAICaptioner",
    "QwenVLCaptioner",
    "TextCaptioner",
    "clean_caption",
    "default_cache_dir",
    "get_captioner",
    "image_digest",
    "join_captions",
    "normalize_captions",
    "select_caption",
    "to_pil_images",
]
