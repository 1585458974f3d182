"""Apply SSP-IR: SSP-IR added to the user's own MODEL as patches on a clone (sampled by KSampler)."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from sspir_core.restore.options import LIMITS, RestoreOptions
from sspir_core.restore.work import cancel_points, plan_prior, processor_tiles

from . import host
from .sockets import NATIVE, SSPIRPatchSocket
from .support import TILE_STEP, images_from_list, problems_message, tiling_widget_problems

_DEFAULTS = RestoreOptions()  # PGA Sampler's tiling defaults: one source for both routes


class SSPIRApply(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SSPIRApply",
            display_name="Apply SSP-IR",
            category=NATIVE,
            description="Adds SSP-IR to a MODEL (an SD1.5/SD2.1 checkpoint from Load Checkpoint, LoRAs and other "
            "patches included): image attention on the CLIP embedding of the LQ, the SSP-IR ControlNet on its "
            "structure prior at every step, pixel attention on the ControlNet residuals. Sample the result with "
            "KSampler (or SamplerCustom and SSP-IR Schedule) from SSP-IR LQ Latent's latent.",
            inputs=[
                io.Model.Input("model", tooltip="The SD UNet SSP-IR was trained on (SD1.5 or SD2.1-base), e.g. from "
                               "Load Checkpoint; LoRAs and other patches on it are kept."),
                SSPIRPatchSocket.Input("sspir_patch", tooltip="From SSP-IR Patch Loader."),
                io.ClipVision.Input("clip_vision", tooltip="CLIP ViT-L/14 (224 px) from Load CLIP Vision: the "
                                    "implicit semantic prior."),
                io.Image.Input("image", tooltip="The LQ image at the output size: SSP-IR LQ Latent's image output "
                               "(the priors are made from it once; its size must be the latent's x8)."),
                io.Float.Input("strength", default=1.0, min=0.0, max=2.0, step=0.05, tooltip=(
                    "The ControlNet conditioning scale (paper: 1); 0 leaves the structure prior out.")),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001, tooltip=(
                    "Where in the sampling the ControlNet starts (0 = first step), as Apply ControlNet.")),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001, tooltip=(
                    "Where it stops (1 = last step). Outside the range the pixel attentions see zeros.")),
                io.Combo.Input("start", options=["paper", "comfy"], default="paper", tooltip=(
                    "How a full-denoise sampling starts:\n- paper: the LQ latent noised to t=999 (the official "
                    "code), also under SSP-IR Schedule's first sigma\n- comfy: ComfyUI's own noising to the first "
                    "sigma")),
                io.Int.Input("processor_tile", default=1024, min=0, max=8192, step=64, tooltip=(
                    "Pixel tile for the Processor (exact; bounds memory on large images); 0 = never tile.")),
                io.Int.Input("tile", default=_DEFAULTS.tile or 0, min=0, max=LIMITS["tile"][1], step=TILE_STEP,
                             tooltip=(
                    f"Latent tile (x8 pixels) for large outputs, a multiple of {TILE_STEP}; 0 = never tile. Each "
                    "model call then runs tile by tile, blended with Gaussian weights as PGA Sampler does: pixel "
                    "attention is quadratic in the area, so outputs above about 1024 px need it.")),
                io.Int.Input("tile_overlap", default=_DEFAULTS.tile_overlap, min=LIMITS["tile_overlap"][0],
                             max=LIMITS["tile_overlap"][1], step=TILE_STEP,
                             tooltip="Latent overlap between tiles; must be smaller than tile."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The MODEL with SSP-IR; sample it with KSampler.")],
        )

    @classmethod
    def widget_problems(cls, tile=None, tile_overlap=None) -> dict[str, str]:
        """By widget, for ``host.attach_errors_to_widgets`` (a new check goes here, on its own widget)."""
        return tiling_widget_problems(tile, tile_overlap)

    @classmethod
    def validate_inputs(cls, tile=None, tile_overlap=None) -> bool | str:
        return problems_message(cls.widget_problems(tile, tile_overlap))

    @classmethod
    def execute(cls, model, sspir_patch, clip_vision, image, strength: float, start_percent: float,
                end_percent: float, start: str, processor_tile: int, tile: int = 0, tile_overlap: int = 0
                ) -> io.NodeOutput:
        from .native_patch import apply, check_model, compute_priors

        check_model(model, sspir_patch)  # before the priors' work
        lq = images_from_list(image).rgb
        # The priors of a large LQ take minutes on a CPU: announced (size, Processor tiles), Cancel in every block
        run, _ = host.start_run()
        h, w = lq.shape[-2:]
        tiles = processor_tiles(h, w, processor_tile or None)
        run.begin(plan_prior("processor", tiles, (w, h), lq.shape[0]), "Apply SSP-IR")
        with cancel_points(run, sspir_patch.module):
            run.unit("processor")
            priors = compute_priors(sspir_patch, clip_vision, lq, processor_tile or None)
        return io.NodeOutput(apply(model, sspir_patch, priors, float(strength), float(start_percent),
                                   float(end_percent), start == "paper", tile or None, int(tile_overlap)))
