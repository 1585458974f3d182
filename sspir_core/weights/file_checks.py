"""Checks of model files that read only headers, for the ComfyUI loader nodes.

Models load lazily, on the first node that runs them; without these checks a damaged SD checkpoint was reported
by Structure Processor and a damaged CLIP file by CLIP Image Embed. Run at the loader node, they make the node
the user must fix the one that fails, with a message naming the file. Each takes well under a second (a 4 GB
checkpoint has a header of a few hundred kB).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError
from .bundled_configs import BASES
from .weights_file import check_weights_file


def check_model_files(sd: str | Path, sspir: str | Path, base: str | None = None) -> str:
    """Base model and SSP-IR weights as :func:`~sspir_core.restore.components.load_pipeline_parts` will load them:
    each file's header, the SD keys of the parts it will use, both on the same base, epsilon prediction, and
    (compact SSP-IR files) base_model's UNet of the shape they were trained on; returns the base."""
    from .base_match import base_words, check_sd_fits_sspir, sd_v_prediction
    from .checkpoint import check_sspir_weights, read_compact_metadata
    from .stable_diffusion import check_sd_source

    official = Path(sspir).is_dir()  # an official checkpoint brings its own UNet
    sd_base = check_sd_source(sd, base, ("vae", "text_encoder") if official else ("unet", "vae", "text_encoder"))
    v_pred = sd_v_prediction(sd)
    if v_pred:
        raise CheckpointError(
            f"base_model {Path(sd).name} is a v-prediction model ({v_pred}), such as SD2.1-768-v; "
            "SSP-IR was trained on epsilon-prediction SD1.5 or SD2.1-base (512 px): pick one of those"
        )
    sspir_base = check_sspir_weights(sspir)
    if sspir_base != sd_base and sspir_base in BASES:  # "custom" (tiny test configs) has no SD to match
        raise CheckpointError(
            f"{Path(sspir).name} was trained on {base_words(sspir_base)}, but base_model "
            f"{Path(sd).name} is {base_words(sd_base)}: use a {base_words(sspir_base)} base model "
            f"(or SSP-IR weights trained on {base_words(sd_base)})"
        )
    if not official:  # a compact file runs on base_model's UNet: it must be the shape it was trained on
        check_sd_fits_sspir(sd, sspir, read_compact_metadata(sspir)["unet_config"], sspir_base, sd_base)
    return sd_base


def check_clip_vision(path: str | Path) -> None:
    """A CLIP vision weights file (what ComfyUI's models/clip_vision lists): header integrity and the key layout
    :func:`~.clip_vision.load_clip_vision` reads (``vision_model.*`` or ``visual.*``)."""
    from .clip_vision import split_formats

    keys = check_weights_file(path)
    if keys and split_formats(dict.fromkeys(keys))[0] == "unknown":  # names only: no tensor is read
        raise CheckpointError(
            f"{path} is not a CLIP vision model (no vision_model.embeddings.patch_embedding.weight or "
            "visual.conv1.weight): use the CLIP ViT-L/14 vision file from ComfyUI models/clip_vision."
        )
