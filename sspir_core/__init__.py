"""SSP-IR core: models, checkpoint I/O, pipeline and tools. Never imports ComfyUI.

Public names are imported on first use, so ``import sspir_core`` (and ``sspir --help``) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import quiet_imports

__version__ = "0.1.0"

quiet_imports.install()  # diffusers without the unused bitsandbytes (3 s and a CPU-kernel error line)

_EXPORTS = {
    "BASES": "build",
    "SSPIRModels": "build",
    "build_models": "build",
    "load_official_checkpoint": "checkpoint",
    "load_sspir_weights": "checkpoint",
    "save_compact": "checkpoint",
    "save_official_checkpoint": "checkpoint",
    "RestoreOptions": "pipeline",
    "RestorePipeline": "pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
