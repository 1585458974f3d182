"""Structure Processor: the structure prior (Processor features for the ControlNet) and a view of it."""

from __future__ import annotations

from sspir_core.image_io import bchw_to_comfy, comfy_to_bchw, padded_size
from sspir_core.restore.components import StructurePrior, output_size

from . import host
from .api import io
from .sizes import SIZE_NOTE, size_inputs
from .sockets import CATEGORY, SSPIRModel, SSPIRStructure
from .support import structure_preview, target_size


class SSPIRStructureProcessor(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SSPIRStructureProcessor",
            display_name="Structure Processor (SSP-IR)",
            category=CATEGORY,
            description="Runs the SSP-IR Processor on the low-quality image: degradation-independent features that "
            "guide the ControlNet, and its RGB predictions at 1/2, 1/4 and 1/8 scale so you can see what "
            "structure it found. " + SIZE_NOTE,
            inputs=[
                SSPIRModel.Input(
                    "sspir_model", tooltip="From SSP-IR Model Loader (its ControlNet holds the Processor)."
                ),
                io.Image.Input("image", tooltip="The low-quality image(s): connect the same IMAGE as the sampler's."),
                *size_inputs(),
            ],
            outputs=[
                SSPIRStructure.Output(
                    display_name="structure",
                    tooltip=("The structure prior; the sampler brings it to its own output size."),
                ),
                io.Image.Output(
                    display_name="rgb_preview",
                    tooltip=(
                        "The Processor's RGB predictions, enlarged to the output size: for each input image its "
                        "1/2, 1/4 and 1/8 scale predictions, one after the other in the batch."
                    ),
                ),
            ],
        )

    @classmethod
    def execute(cls, sspir_model, image, upscale: float, width: int, height: int) -> io.NodeOutput:
        rgb = comfy_to_bchw(image).rgb
        prior = StructurePrior(sspir_model, rgb)
        host.free_memory_for(sspir_model.device)
        size = output_size(rgb, upscale, target_size(width, height))  # arithmetic: the LQ is resized once, in at()
        _, rgbs = prior.at(size, host.start_run()[0])
        w, h = size
        preview = structure_preview(rgbs, (0, h, 0, w), padded_size(h, w))
        return io.NodeOutput(prior, bchw_to_comfy(preview))
