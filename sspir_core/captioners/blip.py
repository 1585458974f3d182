"""BLIP image captioning (e.g. Salesforce/blip-image-captioning-large): small, fast, short captions."""

from __future__ import annotations

from typing import Any, ClassVar

from PIL import Image

from ..errors import CheckpointError
from .local_model import LocalModelCaptioner, dtype_kwarg, transformers_class

# BLIP continues a text prefix; a "clear" prefix steers it away from describing blur and noise.
RESTORATION_PREFIX = "a clear, detailed photo of"


class BlipCaptioner(LocalModelCaptioner):
    """BLIP conditional captioning with beam search; the prompt is a prefix the caption continues."""

    name: ClassVar[str] = "blip"
    default_prompt: ClassVar[str | None] = RESTORATION_PREFIX
    expected_layout: ClassVar[str] = "Salesforce/blip-image-captioning-large"
    default_decoding: ClassVar[dict[str, Any]] = {"num_beams": 3, "max_new_tokens": 60, "repetition_penalty": 1.2}

    def _load(self) -> tuple[Any, Any]:
        if self.config.get("model_type") != "blip":
            raise CheckpointError(
                f"{self.model_dir} holds a {self.config.get('model_type')!r} model, not BLIP ({self.expected_layout})"
            )
        processor = transformers_class("BlipProcessor", backend=self.name).from_pretrained(
            self.model_dir, local_files_only=True
        )
        model = transformers_class("BlipForConditionalGeneration", backend=self.name).from_pretrained(
            self.model_dir, local_files_only=True, **dtype_kwarg(self.dtype)
        )
        return model, processor

    def _run(self, image: Image.Image) -> str:
        if self.prompt:
            inputs = self.processor(images=image, text=self.prompt, return_tensors="pt")
        else:
            inputs = self.processor(images=image, return_tensors="pt")
        # BLIP's generate() returns the prefix plus its continuation: decode it all.
        return self._generate(inputs, new_tokens_only=False)
