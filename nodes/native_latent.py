"""SSP-IR LQ Latent: the LQ upscaled to the output size, its latent (KSampler's start) and the image itself."""

from __future__ import annotations

import torch
from torch import nn

from sspir_core.image_io import bchw_to_comfy, prepare_lq
from sspir_core.restore.tiling import tiled_vae_encode
from sspir_core.restore.work import WorkPlan, cancel_points, vae_encode_grid, vae_encode_overlap

from . import host
from .api import io
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
                io.Int.Input(
                    "vae_tile",
                    default=1024,
                    min=0,
                    max=8192,
                    step=64,
                    tooltip=(
                        "Encode in tiles of this many pixels when the image is larger (blended as PGA Sampler's "
                        "encode; progress and Cancel between tiles); 0 = never tile."
                    ),
                ),
            ],
            outputs=[
                io.Latent.Output(display_name="latent", tooltip="The LQ latent (padded to a multiple of 8 px)."),
                io.Image.Output(
                    display_name="image", tooltip="The LQ at the output size: for Apply SSP-IR and SSP-IR Colour Fix."
                ),
            ],
        )

    @classmethod
    def execute(cls, image, vae, upscale: float, width: int, height: int, vae_tile: int) -> io.NodeOutput:
        lq = images_from_list(image).rgb
        prepared = prepare_lq(lq, upscale=float(upscale), target_size=target_size(width, height))
        y0, y1, x0, x1 = prepared.box
        latent = encode_lq(vae, prepared.image, vae_tile or None)
        return io.NodeOutput({"samples": latent}, bchw_to_comfy(prepared.image[..., y0:y1, x0:x1]))


def encode_lq(vae, padded: torch.Tensor, vae_tile: int | None) -> torch.Tensor:
    """VAE-encode a padded ``[B,3,H,W]`` LQ with the work announced in the log (size, tiles), ComfyUI's progress
    bar per tile, and Cancel between tiles and inside the VAE's blocks: a 3000x2000 encode on a CPU takes many
    minutes (issue 27: 900 s without a log line), and ComfyUI's own tiled encode has no cancel point."""
    h, w = padded.shape[-2:]
    tile = vae_tile if vae_tile and max(h, w) > vae_tile else None
    tiles = len(vae_encode_grid(h, w, tile))
    run, _ = host.start_run()
    size = f"{padded.shape[0]} image(s) at {w}x{h} px ({w * h / 1e6:.1f} MP)"
    run.begin(
        WorkPlan({"vae encode": tiles}, lines=(size + (f", VAE tiles of {tile} px" if tile else ""),)),
        "SSP-IR LQ Latent",
    )

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        return vae.encode(bchw_to_comfy(pixels)).float()

    with cancel_points(run, *[m for m in (getattr(vae, "first_stage_model", None),) if isinstance(m, nn.Module)]):
        if tile is None:
            run.unit("vae encode")
            return encode(padded)
        return tiled_vae_encode(
            encode, padded, tile_px=tile, overlap_px=vae_encode_overlap(tile), on_tile=lambda: run.unit("vae encode")
        )
