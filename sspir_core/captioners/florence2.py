"""Florence-2 captioning tasks.

transformers >= 4.56 has a native Florence2 class that reads converted folders (florence-community/...).
The original microsoft/Florence-2-* folders ship their own Python code: those load only when the user
passes ``trust_remote_code=True``, since that runs code from the folder.
"""

from __future__ import annotations

from typing import Any, ClassVar

from PIL import Image

from ..errors import CheckpointError, InputError
from .local_model import LocalModelCaptioner, dtype_kwarg, transformers_class

CAPTION_TASKS = ("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>")


def needs_remote_code(config: dict[str, Any]) -> bool:
    """True for the original microsoft layout (DaViT vision tower defined by the folder's own code)."""
    import transformers

    vision_type = (config.get("vision_config") or {}).get("model_type")
    native = hasattr(transformers, "Florence2ForConditionalGeneration")
    return not native or vision_type == "davit"


class Florence2Captioner(LocalModelCaptioner):
    """Florence-2 with a caption task token as prompt (default ``<MORE_DETAILED_CAPTION>``)."""

    name: ClassVar[str] = "florence2"
    default_prompt: ClassVar[str | None] = "<MORE_DETAILED_CAPTION>"
    expected_layout: ClassVar[str] = (
        "florence-community/Florence-2-large (or microsoft/Florence-2-large with remote code)"
    )
    default_decoding: ClassVar[dict[str, Any]] = {"num_beams": 3, "max_new_tokens": 1024, "do_sample": False}

    def __init__(self, model_dir: Any, **options: Any) -> None:
        super().__init__(model_dir, **options)
        if self.prompt not in CAPTION_TASKS:
            raise InputError(
                f"Florence-2 takes a caption task as prompt, one of {', '.join(CAPTION_TASKS)}; got {self.prompt!r}"
            )
        if self.config.get("model_type") != "florence2":
            raise CheckpointError(
                f"{self.model_dir} holds a {self.config.get('model_type')!r} model, not Florence-2 "
                f"({self.expected_layout})"
            )
        self.remote_code = needs_remote_code(self.config)
        if self.remote_code and not self.trust_remote_code:
            raise CheckpointError(
                f"{self.model_dir} needs remote code (the Python files shipped in the folder) to load with this "
                "transformers version. Pass trust_remote_code=True (CLI: --trust-remote-code) only if you trust "
                "that code, or use a converted folder such as florence-community/Florence-2-large, which "
                "transformers >= 4.56 loads natively."
            )

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "remote_code": self.remote_code}

    def _load(self) -> tuple[Any, Any]:
        if self.remote_code:
            processor_cls = transformers_class("AutoProcessor", backend=self.name)
            model_cls = transformers_class("AutoModelForCausalLM", backend=self.name)
        else:
            processor_cls = transformers_class("Florence2Processor", backend=self.name)
            model_cls = transformers_class("Florence2ForConditionalGeneration", backend=self.name)
        trust = self.remote_code and self.trust_remote_code
        processor = processor_cls.from_pretrained(self.model_dir, local_files_only=True, trust_remote_code=trust)
        model = model_cls.from_pretrained(
            self.model_dir, local_files_only=True, trust_remote_code=trust, **dtype_kwarg(self.dtype)
        )
        return model, processor

    def _run(self, image: Image.Image) -> str:
        inputs = self.processor(text=self.prompt, images=image, return_tensors="pt")
        if self.remote_code:  # the remote generate() builds its own mask over image + text tokens
            inputs = {k: inputs[k] for k in ("input_ids", "pixel_values")}
        return self._generate(inputs, new_tokens_only=False)
