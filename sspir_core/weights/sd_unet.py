"""Where the plain SD UNet comes from when SSP-IR weights are applied on top of it."""

from __future__ import annotations

from pathlib import Path

from diffusers import UNet2DConditionModel

from .checkpoint import stock_unet_from_official


def load_sd_unet(source: str | Path, base: str | None = None) -> UNet2DConditionModel:
    """The SD UNet from an official ``checkpoint-N/`` folder, a diffusers folder, or a single-file checkpoint."""
    source = Path(source)
    if source.is_dir() and (source / "unet").is_dir() and (source / "controlnet").is_dir():
        return stock_unet_from_official(source)
    from .base_models import load_sd_components

    return load_sd_components(source, base=base, parts=("unet",)).unet
