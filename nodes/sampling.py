"""Sampling settings shared by PGA Sampler and SSP-IR Restore, and the run both of them do."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from sspir_core.image_io import bchw_to_comfy, resize_image
from sspir_core.restore.choices import COLOR_FIX_METHODS, SCHEDULERS
from sspir_core.restore.components import after_run, restore_components
from sspir_core.restore.options import LIMITS, START_CHOICES, RestoreOptions, options_for_mode

from . import host
from .api import io
from .sizes import size_inputs
from .support import (
    OWN_SETTING,
    TILE_STEP,
    VAE_TILE_STEP,
    captions_for_batch,
    images_from_list,
    problems_message,
    sampling_widget_problems,
    single,
    target_size,
    tiling_widget_problems,
)

log = logging.getLogger(__name__)
_DEFAULTS = RestoreOptions()  # the paper's settings: one source for the widget defaults


def caption_inputs() -> list:
    return [
        io.String.Input(
            "caption",
            default="",
            multiline=True,
            tooltip=(
                "The explicit semantic prior: what the restored image shows. Type it, or connect any STRING: MLLM "
                "Caption (one per image), Florence-2, JoyCaption, Ollama, a Primitive...\n"
                "A batch of N images takes one caption for all or a list of N (in batch order)."
            ),
        ),
        io.String.Input(
            "negative_prompt",
            default=_DEFAULTS.negative_prompt,
            multiline=True,
            tooltip=("Guidance pushes away from this text; the paper uses an empty one."),
        ),
    ]


def _range(name: str) -> dict[str, Any]:
    """A widget's min/max: the library's limits (one source for the widget and the run's checks)."""
    low, high = LIMITS[name]
    return {"min": low, "max": high}


def latent_tile_inputs(tile_tooltip: str) -> list:
    """``tile`` (0 = never) and ``tile_overlap`` in latent pixels: one definition for PGA Sampler and Apply SSP-IR,
    bounds from the library's limits (what ``tiling_widget_problems`` checks when queued)."""
    return [
        io.Int.Input(
            "tile", default=_DEFAULTS.tile or 0, min=0, max=LIMITS["tile"][1], step=TILE_STEP, tooltip=tile_tooltip
        ),
        io.Int.Input(
            "tile_overlap",
            default=_DEFAULTS.tile_overlap,
            **_range("tile_overlap"),
            step=TILE_STEP,
            tooltip="Latent overlap between tiles; must be smaller than tile.",
        ),
    ]


def sampling_inputs() -> list:
    return [
        io.Int.Input(
            "seed",
            default=_DEFAULTS.seed,
            **_range("seed"),
            control_after_generate=True,
            tooltip=("Noise seed. Each image of a batch uses it alone, so it restores the same as on its own."),
        ),
        # OWN_SETTING sits below the library's bounds (LIMITS): "the checkpoint's own", resolved in options_from;
        # values between the two are refused when queued (validate_sampling)
        io.Int.Input(
            "steps",
            default=OWN_SETTING,
            min=OWN_SETTING,
            max=_range("steps")["max"],
            tooltip=("Denoising steps; 0 = the checkpoint's own: 50 (paper), or 1 for a one-step SSP-IR checkpoint."),
        ),
        io.Float.Input(
            "cfg",
            default=float(OWN_SETTING),
            min=float(OWN_SETTING),
            max=_range("cfg")["max"],
            step=0.1,
            round=0.01,
            tooltip=(
                "Classifier-free guidance on the caption; 0 = the checkpoint's own: 7.5 (paper), or 1 (off) for a "
                "one-step checkpoint. 1 turns it off and halves the work."
            ),
        ),
        io.Combo.Input(
            "scheduler",
            options=list(SCHEDULERS),
            default=_DEFAULTS.scheduler,
            tooltip=("- ddpm: the paper's sampler\n- ddim, dpmpp, unipc, euler: fewer steps (20-30) often suffice"),
        ),
        io.Combo.Input(
            "start",
            options=list(START_CHOICES),
            default=_DEFAULTS.start,
            tooltip=(
                "- lq: start from the LQ image's latent noised to t=999 (the paper)\n- noise: start from pure noise"
            ),
        ),
        io.Float.Input(
            "conditioning_scale",
            default=_DEFAULTS.conditioning_scale,
            **_range("conditioning_scale"),
            step=0.05,
            tooltip="Strength of the structure prior through the ControlNet (paper: 1).",
        ),
        *size_inputs(),
        # min 0 = never tile; the steps and tile > tile_overlap are checked by validate_sampling when queued
        *latent_tile_inputs(
            f"Latent tile size (x8 pixels) for large outputs, a multiple of {TILE_STEP}; 0 = never tile. Tiles are "
            "blended with Gaussian weights and the colour fix is applied once after stitching, so there are no seams."
        ),
        io.Int.Input(
            "vae_tile",
            default=_DEFAULTS.vae_tile or 0,
            min=0,
            max=LIMITS["vae_tile"][1],
            step=VAE_TILE_STEP,
            tooltip=(
                f"Pixel tile for the VAE encode/decode (bounds memory), a multiple of {VAE_TILE_STEP}; 0 = never tile."
            ),
        ),
        io.Combo.Input(
            "color_fix",
            options=list(COLOR_FIX_METHODS),
            default=_DEFAULTS.color_fix,
            tooltip=(
                "Match the output's colours to the input's (removes the colour shift of diffusion restorers):\n"
                "- adain: per-channel mean/std (paper)\n- wavelet: low frequencies of the input, details of the output"
            ),
        ),
    ]


def sampling_problems(
    tile: Any = None, tile_overlap: Any = None, vae_tile: Any = None, steps: Any = None, cfg: Any = None
) -> dict[str, str]:
    """The nodes' checks when the prompt is queued, by widget (ComfyUI then skips its own min/max checks of these
    inputs, so the bounds are checked here too)."""
    return tiling_widget_problems(tile, tile_overlap, vae_tile) | sampling_widget_problems(steps, cfg)


def validate_sampling(
    tile: Any = None, tile_overlap: Any = None, vae_tile: Any = None, steps: Any = None, cfg: Any = None
) -> bool | str:
    """The nodes' ``validate_inputs``: ComfyUI rejects the prompt with this message before anything runs."""
    return problems_message(sampling_problems(tile, tile_overlap, vae_tile, steps, cfg))


def options_from(kw: dict[str, Any], mode: str = "multi-step", source: str = "the SSP-IR model") -> RestoreOptions:
    """RestoreOptions from the widgets; steps/cfg 0 take the checkpoint's own (one-step: 1 step, no CFG)."""
    v = {
        k: single(k, kw[k])
        for k in (
            "negative_prompt",
            "seed",
            "steps",
            "cfg",
            "scheduler",
            "start",
            "conditioning_scale",
            "tile",
            "tile_overlap",
            "vae_tile",
            "color_fix",
        )
    }
    return options_for_mode(
        mode,
        int(v["steps"]) or None,
        float(v["cfg"]) or None,
        warn=lambda w: log.warning("SSP-IR: %s", w),
        source=source,
        scheduler=v["scheduler"],
        negative_prompt=v["negative_prompt"],
        conditioning_scale=float(v["conditioning_scale"]),
        start=v["start"],
        seed=int(v["seed"]),
        color_fix=v["color_fix"],
        tile=int(v["tile"]),
        tile_overlap=int(v["tile_overlap"]),
        vae_tile=int(v["vae_tile"]),
    )


def run(
    model, image, captions: Any, kw: dict[str, Any], *, image_embed=None, structure=None, clip=None, captioner=None
) -> tuple[torch.Tensor, list[str]]:
    """Restore a ComfyUI IMAGE; every argument may come as a list (list-input nodes). Returns (IMAGE, captions)."""
    from sspir_core.restore.components import captioner_for, checkpoint_mode

    model = single("sspir_model", model)
    lq = images_from_list(image)
    options = options_from(kw, checkpoint_mode(model), Path(model.sspir).name)  # the header, read once per file
    upscale = float(single("upscale", kw["upscale"]))
    size = target_size(single("width", kw["width"]), single("height", kw["height"]))
    b = lq.rgb.shape[0]
    caps = captions_for_batch(captions, b)
    if captioner is not None:  # typed text (one, or one per image) goes in front of each generated caption
        generator = captioner_for(single("captioner", captioner))
        generated = captions_for_batch(generator.caption(lq.rgb, check=host.check_interrupted), b)
        caps = [f"{typed} {gen}".strip() for typed, gen in zip(caps, generated)]
    image_embed = single("image_embed", image_embed) if image_embed else None
    structure = single("structure", structure) if structure else None
    clip = single("clip_vision", clip) if clip else (image_embed.clip if image_embed is not None else None)
    host.free_memory_for(model.device)
    run, callback = host.start_run(rate_key=(model.key(), model.device, options.tile, options.cfg != 1.0))
    try:
        out = restore_components(
            model,
            lq.rgb,
            caps,
            options,
            upscale,
            size,
            image_embed=image_embed,
            structure=structure,
            clip=clip,
            callback=callback,
            run=run,
        )
    finally:
        after_run(model, clip, (image_embed, structure))
    alpha = None if lq.alpha is None else resize_image(lq.alpha, tuple(out.shape[-2:]))
    return bchw_to_comfy(out, alpha), caps
