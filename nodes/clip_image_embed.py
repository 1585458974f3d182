"""CLIP Image Embed: the implicit semantic prior (CLIP patch tokens of the LQ through the Refine layer)."""

from __future__ import annotations

from sspir_core.image_io import comfy_to_bchw
from sspir_core.restore.components import ImageEmbedPrior, output_size

from . import host
from .api import io
from .sizes import SIZE_NOTE, size_inputs
from .sockets import CATEGORY, SSPIRClipVision, SSPIRImageEmbed, SSPIRModel
from .support import target_size


class SSPIRClipImageEmbed(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SSPIRClipImageEmbed",
            display_name="CLIP Image Embed (SSP-IR)",
            category=CATEGORY,
            description="CLIP ViT-L/14 patch tokens of the low-quality image, refined by the SSP-IR model's Refine "
            "layer. " + SIZE_NOTE,
            inputs=[
                SSPIRModel.Input("sspir_model", tooltip="From SSP-IR Model Loader (its Refine layer is used)."),
                SSPIRClipVision.Input("clip_vision", tooltip="From SSP-IR CLIP Vision Loader."),
                io.Image.Input("image", tooltip="The low-quality image(s): connect the same IMAGE as the sampler's."),
                *size_inputs(),
            ],
            outputs=[
                SSPIRImageEmbed.Output(
                    display_name="image_embed",
                    tooltip=("The implicit semantic prior; the sampler brings it to its own output size."),
                )
            ],
        )

    @classmethod
    def execute(cls, sspir_model, clip_vision, image, upscale: float, width: int, height: int) -> io.NodeOutput:
        rgb = comfy_to_bchw(image).rgb
        prior = ImageEmbedPrior(sspir_model, clip_vision, rgb)
        host.free_memory_for(sspir_model.device)
        prior.at(output_size(rgb, upscale, target_size(width, height)), host.start_run()[0])
        return io.NodeOutput(prior)
