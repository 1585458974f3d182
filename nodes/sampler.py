"""PGA Sampler: the SSP-IR denoising loop (Prior-Guided Attention) with the priors from other nodes."""

from __future__ import annotations

from . import sampling
from .api import io
from .sockets import CATEGORY, SSPIRImageEmbed, SSPIRModel, SSPIRStructure


class SSPIRSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SSPIRSampler",
            display_name="PGA Sampler (SSP-IR)",
            category=CATEGORY,
            description="Restores the low-quality image with Stable Diffusion guided by the three priors: the caption "
            "(text attention), the CLIP image embedding (image attention) and the structure prior (ControlNet, pixel "
            "attention). The priors are brought to this node's output size (recomputed if they were made at another).",
            is_input_list=True,  # the caption may be a per-image list (MLLM Caption) or one STRING
            inputs=[
                SSPIRModel.Input("sspir_model", tooltip="From SSP-IR Model Loader."),
                io.Image.Input(
                    "image", tooltip="The low-quality image(s) to restore (any size; RGBA keeps its alpha)."
                ),
                SSPIRImageEmbed.Input(
                    "image_embed", tooltip="From CLIP Image Embed (SSP-IR), made from the same image."
                ),
                SSPIRStructure.Input(
                    "structure", tooltip="From Structure Processor (SSP-IR), made from the same image."
                ),
                *sampling.caption_inputs(),
                *sampling.sampling_inputs(),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The restored image(s), at the output size.")],
        )

    @classmethod
    def widget_problems(cls, tile=None, tile_overlap=None, vae_tile=None, steps=None, cfg=None) -> dict[str, str]:
        return sampling.sampling_problems(tile, tile_overlap, vae_tile, steps, cfg)

    @classmethod
    def validate_inputs(cls, tile=None, tile_overlap=None, vae_tile=None, steps=None, cfg=None) -> bool | str:
        return sampling.validate_sampling(tile, tile_overlap, vae_tile, steps, cfg)

    @classmethod
    def execute(cls, sspir_model, image, image_embed, structure, caption, **kw) -> io.NodeOutput:
        out, _ = sampling.run(sspir_model, image, caption, kw, image_embed=image_embed, structure=structure)
        return io.NodeOutput(out)
