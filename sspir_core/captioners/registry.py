"""Captioner names -> classes, so nodes and the CLI pick a backend by name."""

from __future__ import annotations

import inspect
from types import MappingProxyType
from typing import Any

from ..errors import InputError
from .base import Captioner
from .blip import BlipCaptioner
from .florence2 import Florence2Captioner
from .llava import LlavaCaptioner
from .openai_api import OpenAICaptioner
from .qwen_vl import QwenVLCaptioner
from .typed import TextCaptioner

CAPTIONERS: MappingProxyType[str, type[Captioner]] = MappingProxyType(
    {
        cls.name: cls
        for cls in (LlavaCaptioner, QwenVLCaptioner, Florence2Captioner, BlipCaptioner, OpenAICaptioner, TextCaptioner)
    }
)

ALIASES = MappingProxyType(
    {
        "llava-1.5": "llava",
        "qwen": "qwen2-vl",
        "qwen2.5-vl": "qwen2-vl",
        "qwen-vl": "qwen2-vl",
        "florence-2": "florence2",
        "ollama": "openai",
        "typed": "text",
    }
)


def get_captioner(name: str, **options: Any) -> Captioner:
    """Build a captioner by name. Local backends take ``model_dir``; ``openai`` takes ``url``; ``text`` takes ``text``.

    Common options: ``prompt``, ``seed``, ``keep_loaded``, ``cache_dir`` (None disables the cache);
    model backends also take ``device``, ``dtype``, ``max_new_tokens``, ``generate_kwargs``, ``trust_remote_code``.
    """
    key = ALIASES.get(name.lower(), name.lower())
    cls = CAPTIONERS.get(key)
    if cls is None:
        raise InputError(f"unknown captioner {name!r}; choose one of {', '.join(CAPTIONERS)}")
    accepted = accepted_options(cls)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise InputError(
            f"bad options for the {key} captioner: {', '.join(unknown)}; it takes {', '.join(sorted(accepted))}"
        )
    return cls(**options)


def accepted_options(cls: type[Captioner]) -> set[str]:
    """Keyword options a captioner class takes, following ``**options`` up the class hierarchy."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(vars(klass)["__init__"]).parameters.values()
        names.update(p.name for p in params if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names
