"""Public entry point for loading SSP-IR's frozen base models; the code lives in ``sspir_core.weights``."""

from . import (
    CLIP_MEAN,
    CLIP_STD,
    PARTS,
    ClipVisionEncoder,
    SDComponents,
    load_clip_vision,
    load_sd_components,
    load_tokenizer,
    sd_config_dir,
)

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "PARTS",
    "ClipVisionEncoder",
    "SDComponents",
    "load_clip_vision",
    "load_sd_components",
    "load_tokenizer",
    "sd_config_dir",
]
