"""SSP-IR CLIP Vision Loader: the CLIP ViT-L/14 tower of the implicit semantic prior (loaded on first use)."""

from __future__ import annotations

from sspir_core.restore.components import ClipVisionSpec
from sspir_core.restore.model_cache import file_signature
from sspir_core.weights.file_checks import check_clip_vision

from . import host
from .api import io
from .sockets import LOADERS, SSPIRClipVision


class SSPIRClipVisionLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SSPIRClipVisionLoader",
            display_name="SSP-IR CLIP Vision Loader",
            category=LOADERS,
            description="Chooses the CLIP ViT-L/14 (224 px) vision model whose patch tokens feed SSP-IR's Refine "
            "layer. Only the file's header is read here; the weights load on first use and stay for the next prompts.",
            inputs=[
                io.Combo.Input(
                    "clip_name",
                    options=host.file_choices("clip_vision"),
                    tooltip=(
                        "CLIP ViT-L/14 vision weights from models/clip_vision, in transformers layout "
                        "(vision_model.* keys, e.g. clip-vit-large-patch14 model.safetensors) or OpenAI/OpenCLIP "
                        "layout (visual.* keys). Other sizes (ViT-H, bigG) do not fit SSP-IR."
                    ),
                ),
            ],
            outputs=[
                SSPIRClipVision.Output(display_name="clip_vision", tooltip="CLIP vision tower (loaded on first use).")
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, clip_name: str) -> object:
        try:
            return file_signature(host.resolve_file("clip_vision", clip_name, "clip_name"))
        except Exception:
            return None

    @classmethod
    def execute(cls, clip_name: str) -> io.NodeOutput:
        path = host.resolve_file("clip_vision", clip_name, "clip_name")
        check_clip_vision(path)  # header only: a damaged file fails here, not on CLIP Image Embed
        return io.NodeOutput(ClipVisionSpec(path))
