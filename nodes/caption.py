"""MLLM Caption: one caption per image of a batch (the explicit semantic prior), as a list of STRING."""

from __future__ import annotations

import torch

from sspir_core.captioners import to_pil_images
from sspir_core.image_io import comfy_to_bchw
from sspir_core.restore.components import captioner_for

from . import host
from .api import io, ui
from .sockets import CATEGORY, SSPIRCaptioner


class SSPIRCaption(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SSPIRCaption",
            display_name="MLLM Caption (SSP-IR)",
            category=CATEGORY,
            description="Describes each image with a multimodal LLM. The output is a list with one caption per "
            "image; connect it to the sampler's caption, or read and edit it with any text node on the way.",
            inputs=[
                SSPIRCaptioner.Input("captioner", tooltip="From SSP-IR Captioner Loader."),
                io.Image.Input(
                    "image",
                    tooltip=("The low-quality image(s). Each image of a batch gets its own caption (in batch order)."),
                ),
            ],
            outputs=[
                io.String.Output(
                    display_name="caption",
                    is_output_list=True,
                    tooltip=("One caption per image, as a list (a downstream text node runs once per caption)."),
                )
            ],
        )

    @classmethod
    def execute(cls, captioner, image) -> io.NodeOutput:
        rgb = comfy_to_bchw(image).rgb
        if captioner.backend != "openai" and captioner.device != "auto":
            host.free_memory_for(torch.device(captioner.device))
        captions = captioner_for(captioner).caption(to_pil_images(rgb), check=host.check_interrupted)
        return io.NodeOutput(captions, ui=ui.PreviewText("\n\n".join(captions)))
