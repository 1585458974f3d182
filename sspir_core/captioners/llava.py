"""LLaVA-1.5 (the paper's captioner) in the transformers ``llava-hf`` layout."""

from __future__ import annotations

from typing import Any, ClassVar

from PIL import Image

from ..errors import CheckpointError
from .base import PAPER_DECODING, PAPER_PROMPT
from .local_model import LocalModelCaptioner, dtype_kwarg, transformers_class

# LLaVA-1.5's own conversation format, for processors saved without a chat template.
LLAVA15_TEMPLATE = "USER: <image>\n{prompt} ASSISTANT:"


class LlavaCaptioner(LocalModelCaptioner):
    """LLaVA-1.5 with the paper's prompt and decoding (sampling, temperature 0.2, top-p 0.7, 512 tokens)."""

    name: ClassVar[str] = "llava"
    default_prompt: ClassVar[str | None] = PAPER_PROMPT
    expected_layout: ClassVar[str] = "llava-hf/llava-1.5-7b-hf"
    default_decoding: ClassVar[dict[str, Any]] = PAPER_DECODING

    def _load(self) -> tuple[Any, Any]:
        model_type = self.config.get("model_type")
        if model_type != "llava":
            raise CheckpointError(
                f"{self.model_dir} holds a {model_type!r} model, not a transformers LLaVA ('llava'). The original "
                "liuhaotian/llava-v1.5-7b release needs its own code; use the converted llava-hf/llava-1.5-7b-hf "
                "folder instead."
            )
        processor_cls = transformers_class("AutoProcessor", backend=self.name)
        model_cls = transformers_class("LlavaForConditionalGeneration", backend=self.name)
        processor = processor_cls.from_pretrained(self.model_dir, local_files_only=True, trust_remote_code=False)
        model = model_cls.from_pretrained(
            self.model_dir, local_files_only=True, trust_remote_code=False, **dtype_kwarg(self.dtype)
        )
        return model, processor

    def build_prompt(self) -> str:
        """The processor's chat template when it has one, else LLaVA-1.5's ``USER: <image>\\n... ASSISTANT:``."""
        if getattr(self.processor, "chat_template", None):
            conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt}]}]
            return self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        return LLAVA15_TEMPLATE.format(prompt=self.prompt)

    def _run(self, image: Image.Image) -> str:
        inputs = self.processor(images=image, text=self.build_prompt(), return_tensors="pt")
        return self._generate(inputs)
