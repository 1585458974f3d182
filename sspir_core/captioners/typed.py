"""The caption a person typed: the explicit prior the paper lets users read and edit."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from PIL import Image

from .base import Captioner
from .images import to_pil_images
from .text import normalize_captions


class TextCaptioner(Captioner):
    """Returns the given text: one string for every image, or one string per image."""

    name: ClassVar[str] = "text"

    def __init__(self, text: str | Sequence[str] = "", **options: Any) -> None:
        options["cache_dir"] = None  # nothing to save: the text is the caption
        options.pop("prompt", None)
        super().__init__(**options)
        self.text = text

    def caption(self, images: Any, check: Callable[[], None] | None = None) -> list[str]:
        return normalize_captions(self.text, len(to_pil_images(images)))  # instant: nothing to cancel

    __call__ = caption

    def _caption_one(self, image: Image.Image) -> str:  # pragma: no cover - caption() is overridden
        return normalize_captions(self.text, 1)[0]
