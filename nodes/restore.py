"""SSP-IR Restore: the whole method in one node (captions, both priors and the sampler)."""

from __future__ import annotations

from . import sampling
from .api import io, ui
from .sockets import CATEGORY, SSPIRCaptioner, SSPIRClipVision, SSPIRModel


class SSPIRRestore(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SSPIRRestore",
            display_name="SSP-IR Restore (all in one)",
            category=CATEGORY,
            description="Caption (optional captioner), CLIP image embedding, structure prior and sampling in one "
            "node. Gives the same result as the component nodes with the same settings.",
            is_input_list=True,
            inputs=[
                SSPIRModel.Input("sspir_model", tooltip="From SSP-IR Model Loader."),
                SSPIRClipVision.Input("clip_vision", tooltip="From SSP-IR CLIP Vision Loader."),
                io.Image.Input(
                    "image", tooltip="The low-quality image(s) to restore (any size; RGBA keeps its alpha)."
                ),
                SSPIRCaptioner.Input(
                    "captioner",
                    optional=True,
                    tooltip=(
                        "Optional: captions each image. The caption text below, if any, is put in front of each "
                        "generated caption (e.g. style words)."
                    ),
                ),
                *sampling.caption_inputs(),
                *sampling.sampling_inputs(),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The restored image(s), at the output size."),
                io.String.Output(
                    display_name="captions",
                    is_output_list=True,
                    tooltip=("The caption used for each image, as a list."),
                ),
            ],
        )

    @classmethod
    def widget_problems(cls, tile=None, tile_overlap=None, vae_tile=None, steps=None, cfg=None) -> dict[str, str]:
        return sampling.sampling_problems(tile, tile_overlap, vae_tile, steps, cfg)

    @classmethod
    def validate_inputs(cls, tile=None, tile_overlap=None, vae_tile=None, steps=None, cfg=None) -> bool | str:
        return sampling.validate_sampling(tile, tile_overlap, vae_tile, steps, cfg)

    @classmethod
    def execute(cls, sspir_model, clip_vision, image, caption, captioner=None, **kw) -> io.NodeOutput:
        out, caps = sampling.run(sspir_model, image, caption, kw, clip=clip_vision, captioner=captioner)
        return io.NodeOutput(out, caps, ui=ui.PreviewText("\n\n".join(caps)))
