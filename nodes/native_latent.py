"""SSP-IR LQ Latent: the LQ upscaled to the output size, its latent (KSampler's start) and the image itself."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from sspir_core.image_io import bchw_to_comfy, prepare_lq
from sspir_core.restore.work import vae_encode_overlap

from .sizes import size_inputs
from .sockets import NATIVE
from .support import images_from_list, target_size


class SSPIRLQLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SSPIRLQLatent",
            display_name="SSP-IR LQ Latent",
            category=NATIVE,
            description="Upscales the LQ image to the output size (as PGA Sampler does) and VAE-encodes it. KSampler "
            "at denoise 1.0 from this latent on a MODEL from Apply SSP-IR starts where the paper does: the LQ latent "
            "noised to t=999. The image output goes to Apply SSP-IR and to SSP-IR Colour Fix.",
            inputs=[
                io.Image.Input("image", tooltip="The low-quality image(s) (any size; the alpha is dropped)."),
                io.Vae.Input("vae", tooltip="The VAE of your SD checkpoint (Load Checkpoint)."),
                *size_inputs(),
                io.Int.Input("vae_tile", default=1024, min=0, max=8192, step=64, tooltip=(
                    "Encode in tiles of this many pixels (ComfyUI's tiled VAE encode) when the image is larger; "
                    "0 = never tile.")),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="The LQ latent (padded to a multiple of 8 px)."),
                     io.Image.Output(display_name="image", tooltip="The LQ at the output size: for Apply SSP-IR and "
                                     "SSP-IR Colour Fix.")],
        )

    @classmethod
    def execute(cls, image, vae, upscale: float, width: int, height: int, vae_tile: int) -> io.NodeOutput:
        lq = images_from_list(image).rgb
        prepared = prepare_lq(lq, upscale=float(upscale), target_size=target_size(width, height))
        y0, y1, x0, x1 = prepared.box
        pixels = bchw_to_comfy(prepared.image)
        h, w = pixels.shape[1:3]
        if vae_tile and max(h, w) > vae_tile:
            latent = vae.encode_tiled(pixels, tile_x=vae_tile, tile_y=vae_tile, overlap=vae_encode_overlap(vae_tile))
        else:
            latent = vae.encode(pixels)
        return io.NodeOutput({"samples": latent}, bchw_to_comfy(prepared.image[..., y0:y1, x0:x1]))
