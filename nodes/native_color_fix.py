"""SSP-IR Colour Fix: the restored image's colours matched to the LQ's (AdaIN or wavelet), as PGA Sampler does."""

from __future__ import annotations

from sspir_core.errors import InputError
from sspir_core.image_io import bchw_to_comfy
from sspir_core.restore.color_fix import apply_color_fix

from .api import io
from .sockets import NATIVE
from .support import images_from_list


class SSPIRColorFix(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SSPIRColorFix",
            display_name="SSP-IR Colour Fix",
            category=NATIVE,
            description="Matches the restored image's colours to the reference (the LQ at the output size, from "
            "SSP-IR LQ Latent) and crops the padding the latent needed.",
            inputs=[
                io.Image.Input("image", tooltip="The restored image (VAE Decode)."),
                io.Image.Input("reference", tooltip="SSP-IR LQ Latent's image output (the LQ at the output size)."),
                io.Combo.Input(
                    "method",
                    options=["adain", "wavelet", "none"],
                    default="adain",
                    tooltip=(
                        "- adain: per-channel mean/std (paper)\n- wavelet: low frequencies of the reference, "
                        "details of "
                        "the image\n- none: only crop"
                    ),
                ),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The colour-fixed image at the reference's size.")],
        )

    @classmethod
    def execute(cls, image, reference, method: str) -> io.NodeOutput:
        out = images_from_list(image).rgb
        ref = images_from_list(reference).rgb
        (h, w), (rh, rw) = out.shape[-2:], ref.shape[-2:]
        if h < rh or w < rw or out.shape[0] != ref.shape[0]:
            raise InputError(
                f"image is {out.shape[0]} x {w}x{h} px, reference {ref.shape[0]} x {rw}x{rh}: give the "
                "decoded image of the latent made with this reference"
            )
        return io.NodeOutput(bchw_to_comfy(apply_color_fix(out[..., :rh, :rw], ref, method)))
