"""SSP-IR core: models, checkpoint I/O, pipeline and tools. Never imports ComfyUI."""

__version__ = "0.1.0"

from .build import BASES, SSPIRModels, build_models
from .checkpoint import load_official_checkpoint, load_sspir_weights, save_compact, save_official_checkpoint

__all__ = [
    "BASES",
    "SSPIRModels",
    "build_models",
    "load_official_checkpoint",
    "load_sspir_weights",
    "save_compact",
    "save_official_checkpoint",
]
