"""Apply SSP-IR: SSP-IR added to the user's own MODEL as patches on a clone (sampled by KSampler)."""

from __future__ import annotations

import math
from typing import Any

from sspir_core.errors import InputError
from sspir_core.restore.work import cancel_points, plan_prior, processor_tiles

from . import host
from .api import io
from .sampling import latent_tile_inputs
from .sockets import NATIVE, SSPIRPatchSocket
from .support import TILE_STEP, images_from_list, problems_message, single, tiling_widget_problems


def percent_range_problems(start_percent: Any = None, end_percent: Any = None) -> dict[str, str]:
    """What is wrong with Apply SSP-IR's ControlNet range at queue time, by widget; empty if nothing. A value that
    arrives through a link (None while validating) is not known yet and passes; an end below the start is
    end_percent's problem."""
    problems: dict[str, str] = {}
    values = {}
    for name, value in (("start_percent", start_percent), ("end_percent", end_percent)):
        try:
            value = single(name, value)
        except InputError as exc:
            problems[name] = str(exc)
            continue
        if value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or not 0.0 <= value <= 1.0
        ):
            problems[name] = f"{name} must be a number from 0 to 1, got {value!r}"
            continue
        values[name] = float(value)
    if len(values) == 2 and values["end_percent"] < values["start_percent"]:
        problems["end_percent"] = (
            f"end_percent ({values['end_percent']}) is below start_percent "
            f"({values['start_percent']}): the ControlNet would never run; set end_percent "
            ">= start_percent"
        )
    return problems


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
                io.Model.Input(
                    "model",
                    tooltip="The SD UNet SSP-IR was trained on (SD1.5 or SD2.1-base), e.g. from "
                    "Load Checkpoint; LoRAs and other patches on it are kept.",
                ),
                SSPIRPatchSocket.Input(
                    "sspir_patch",
                    tooltip="From SSP-IR Patch Loader. A one-step checkpoint's "
                    "UNet LoRA is added to the MODEL as weight patches (beside your LoRAs).",
                ),
                io.ClipVision.Input(
                    "clip_vision", tooltip="CLIP ViT-L/14 (224 px) from Load CLIP Vision: the implicit semantic prior."
                ),
                io.Image.Input(
                    "image",
                    tooltip="The LQ image at the output size: SSP-IR LQ Latent's image output "
                    "(the priors are made from it once; its size must be the latent's x8).",
                ),
                io.Float.Input(
                    "strength",
                    default=1.0,
                    min=0.0,
                    max=2.0,
                    step=0.05,
                    tooltip=("The ControlNet conditioning scale (paper: 1); 0 leaves the structure prior out."),
                ),
                io.Float.Input(
                    "start_percent",
                    default=0.0,
                    min=0.0,
                    max=1.0,
                    step=0.001,
                    tooltip=("Where in the sampling the ControlNet starts (0 = first step), as Apply ControlNet."),
                ),
                io.Float.Input(
                    "end_percent",
                    default=1.0,
                    min=0.0,
                    max=1.0,
                    step=0.001,
                    tooltip=("Where it stops (1 = last step). Outside the range the pixel attentions see zeros."),
                ),
                io.Combo.Input(
                    "start",
                    options=["paper", "comfy"],
                    default="paper",
                    tooltip=(
                        "How a full-denoise sampling starts:\n- paper: the LQ latent noised to t=999 (the official "
                        "code) and fed to the first step. Full denoise: KSampler at denoise 1 (any scheduler), "
                        "SSP-IR Schedule (2+ steps) in SamplerCustom, or its first part after SplitSigmas. "
                        "img2img (denoise < 1, KSamplerAdvanced from a later step, a later part of split sigmas) "
                        "keeps ComfyUI's noising. A sampling whose first two sigmas equal such a start is counted "
                        "as one. For one-step SSP-IR weights: the LQ latent itself at t=999, no noise (sample with "
                        "KSampler, 1 step, cfg 1, euler, scheduler simple)\n- comfy: ComfyUI's own noising to the "
                        "first sigma, always"
                    ),
                ),
                io.Int.Input(
                    "processor_tile",
                    default=1024,
                    min=0,
                    max=8192,
                    step=64,
                    tooltip=("Pixel tile for the Processor (exact; bounds memory on large images); 0 = never tile."),
                ),
                *latent_tile_inputs(
                    f"Latent tile (x8 pixels) for large outputs, a multiple of {TILE_STEP}; 0 = never tile. Each "
                    "model call then runs tile by tile, blended with Gaussian weights as PGA Sampler does: pixel "
                    "attention is quadratic in the area, so outputs above about 1024 px need it."
                ),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="The MODEL with SSP-IR; sample it with KSampler.")],
        )

    @classmethod
    def widget_problems(cls, tile=None, tile_overlap=None, start_percent=None, end_percent=None) -> dict[str, str]:
        """By widget, for ``host.attach_errors_to_widgets`` (a new check goes here, on its own widget)."""
        return tiling_widget_problems(tile, tile_overlap) | percent_range_problems(start_percent, end_percent)

    @classmethod
    def validate_inputs(cls, tile=None, tile_overlap=None, start_percent=None, end_percent=None) -> bool | str:
        # ComfyUI skips its own min/max checks of the inputs named here: widget_problems checks their bounds
        return problems_message(cls.widget_problems(tile, tile_overlap, start_percent, end_percent))

    @classmethod
    def execute(
        cls,
        model,
        sspir_patch,
        clip_vision,
        image,
        strength: float,
        start_percent: float,
        end_percent: float,
        start: str,
        processor_tile: int,
        tile: int = 0,
        tile_overlap: int = 0,
    ) -> io.NodeOutput:
        from .native_contract import check_control_contract
        from .native_one_step import add_one_step, one_step_patches
        from .native_patch import apply, check_model, compute_priors

        check_control_contract()  # once per process: this ComfyUI's UNet reads `control` as the route assumes
        check_model(model, sspir_patch)  # before the priors' work
        lora = one_step_patches(model, sspir_patch)  # a one-step checkpoint's UNet LoRA, checked on the MODEL
        lq = images_from_list(image).rgb
        # The priors of a large LQ take minutes on a CPU: announced (size, Processor tiles), Cancel in every block
        run, _ = host.start_run()
        h, w = lq.shape[-2:]
        tiles = processor_tiles(h, w, processor_tile or None)
        run.begin(plan_prior("processor", tiles, (w, h), lq.shape[0]), "Apply SSP-IR")
        with cancel_points(run, sspir_patch.module):
            run.unit("processor")
            priors = compute_priors(sspir_patch, clip_vision, lq, processor_tile or None)
        paper = start == "paper"
        out = apply(
            model,
            sspir_patch,
            priors,
            float(strength),
            float(start_percent),
            float(end_percent),
            paper and lora is None,
            tile or None,
            int(tile_overlap),
        )
        if lora is not None:  # one-step: its own start (the LQ latent at t=999, no noise) replaces the paper's
            add_one_step(out, lora, paper)
        return io.NodeOutput(out)
