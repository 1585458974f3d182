"""The captioner interface: images in, one clean caption string per image out."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

from ..errors import SSPIRError
from .cache import CaptionCache, default_cache_dir, identity_digest
from .images import image_digest, to_pil_images
from .text import clean_caption

# The paper's explicit-prior settings (LLaVA-1.5): one place for every backend that follows them.
PAPER_PROMPT = "Describe the image in a very detailed manner if we remove the degradation artifacts from the image."
PAPER_DECODING: dict = {"do_sample": True, "temperature": 0.2, "top_p": 0.7, "max_new_tokens": 512}


class CaptionerError(SSPIRError):
    """A captioner could not produce a caption (model failed to load or run, server unreachable)."""


class _DefaultCache:
    """Sentinel type: use the default cache location (see :func:`default_cache_dir`)."""

    def __repr__(self) -> str:
        return "DEFAULT_CACHE"


DEFAULT_CACHE: Any = _DefaultCache()

CacheDir = str | os.PathLike[str] | None | _DefaultCache


class Captioner(ABC):
    """Base class. Subclasses implement :meth:`_caption_one` (and :meth:`unload` if they hold memory).

    ``caption()`` always returns ``list[str]`` with one caption per image, looks each image up in the
    disk cache first, and loads the model only when some image is not cached.
    """

    name: ClassVar[str] = ""
    default_prompt: ClassVar[str | None] = None

    def __init__(
        self,
        *,
        prompt: str | None = None,
        seed: int | None = 0,
        keep_loaded: bool = True,
        cache_dir: CacheDir = DEFAULT_CACHE,
    ) -> None:
        self.prompt = self.default_prompt if prompt is None else prompt
        self.seed = seed
        self.keep_loaded = keep_loaded
        if isinstance(cache_dir, _DefaultCache):
            cache_dir = default_cache_dir()
        self.cache: CaptionCache | None = CaptionCache(Path(cache_dir)) if cache_dir is not None else None
        self.model_calls = 0  # images actually sent to the model (cache misses)
        # While caption() runs: the caller's cancel check (raises to stop). Backends that generate token by
        # token call it after every token, the others between images.
        self.check: Callable[[], None] | None = None

    # -- to implement -------------------------------------------------------------------------------
    @abstractmethod
    def _caption_one(self, image: Image.Image) -> str:
        """Raw caption for one RGB image (cleaning is done by the caller)."""

    def identity(self) -> dict[str, Any]:
        """Everything that changes the caption for a given image: the non-image part of the cache key."""
        return {"backend": self.name, "prompt": self.prompt, "seed": self.seed}

    def unload(self) -> None:
        """Free the model's memory; the next caption loads it again."""
        return None

    # -- public API ---------------------------------------------------------------------------------
    def caption(self, images: Any, check: Callable[[], None] | None = None) -> list[str]:
        """One clean caption per image (PIL, numpy or torch; a batch or a list).

        ``check``: called between images and, by local models, after every generated token; it raises to
        cancel (e.g. ComfyUI's interrupt). Captions finished before are already in the disk cache.
        """
        pils = to_pil_images(images)
        results: list[str | None] = [None] * len(pils)
        keys: list[str | None] = [None] * len(pils)
        identity: dict[str, Any] | None = None
        if self.cache is not None:
            identity = self.identity()
            id_hash = identity_digest(identity)
            for i, img in enumerate(pils):
                keys[i] = self.cache.key(id_hash, image_digest(img))
                results[i] = self.cache.get(keys[i])
        done: dict[str, str] = {}  # the same image twice in one batch is captioned once
        self.check = check
        try:
            for i, img in enumerate(pils):
                if results[i] is not None:
                    continue
                if check is not None:
                    check()
                if keys[i] is not None and keys[i] in done:
                    results[i] = done[keys[i]]
                    continue
                self.model_calls += 1
                text = clean_caption(self._caption_one(img))
                results[i] = text
                if self.cache is not None and keys[i] is not None:
                    self.cache.put(keys[i], text, identity)
                    done[keys[i]] = text
        finally:
            self.check = None
            if not self.keep_loaded:
                self.unload()
        return [r if r is not None else "" for r in results]

    __call__ = caption

    def close(self) -> None:
        self.unload()

    def __enter__(self) -> Captioner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unload()
