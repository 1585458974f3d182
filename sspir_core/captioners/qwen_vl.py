"""Qwen2-VL / Qwen2.5-VL (and later Qwen-VL versions transformers knows) from a local folder."""

from __future__ import annotations

import math
from typing import Any, ClassVar

from PIL import Image

from ..errors import CheckpointError
from .base import PAPER_DECODING
from .local_model import LocalModelCaptioner, dtype_kwarg, transformers_class

RESTORATION_PROMPT = (
    "Describe this image in detail as it would look with all degradation artifacts (blur, noise, "
    "compression, low resolution) removed: the objects, people, their attributes, colours, textures, "
    "materials and the setting. Write one paragraph and do not mention image quality."
)

_MODEL_CLASSES = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
}


class QwenVLCaptioner(LocalModelCaptioner):
    """Qwen-VL chat models; large inputs are downscaled to ``max_pixels`` to bound visual tokens and memory."""

    name: ClassVar[str] = "qwen2-vl"
    default_prompt: ClassVar[str | None] = RESTORATION_PROMPT
    expected_layout: ClassVar[str] = "Qwen/Qwen2-VL-2B-Instruct or Qwen/Qwen2.5-VL-3B-Instruct"
    default_decoding: ClassVar[dict[str, Any]] = PAPER_DECODING

    def __init__(self, model_dir: Any, *, max_pixels: int = 1024 * 28 * 28, **options: Any) -> None:
        super().__init__(model_dir, **options)
        self.max_pixels = int(max_pixels)

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "max_pixels": self.max_pixels}

    def _load(self) -> tuple[Any, Any]:
        model_type = self.config.get("model_type")
        class_name = _MODEL_CLASSES.get(str(model_type))
        if class_name is None:
            raise CheckpointError(
                f"{self.model_dir} holds a {model_type!r} model; the qwen2-vl captioner reads "
                f"{', '.join(_MODEL_CLASSES)} folders ({self.expected_layout})"
            )
        processor = transformers_class("AutoProcessor", backend=self.name).from_pretrained(
            self.model_dir, local_files_only=True, trust_remote_code=False
        )
        model = transformers_class(class_name, backend=self.name).from_pretrained(
            self.model_dir, local_files_only=True, trust_remote_code=False, **dtype_kwarg(self.dtype)
        )
        return model, processor

    def _fit(self, image: Image.Image) -> Image.Image:
        w, h = image.size
        if w * h <= self.max_pixels:
            return image
        scale = math.sqrt(self.max_pixels / (w * h))
        return image.resize((max(1, int(w * scale)), max(1, int(h * scale))), Image.Resampling.BICUBIC)

    def _run(self, image: Image.Image) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt}]}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = self.processor(text=[text], images=[self._fit(image)], return_tensors="pt")
        return self._generate(inputs)
