"""Training SSP-IR: data (official pairs or GT + Real-ESRGAN degradations), the accelerate trainer, its config.

Names are imported on first use, so ``sspir --help`` (which reads the config's fields) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrainConfig": "config",
    "TrainResult": "trainer",
    "Trainer": "trainer",
    "list_checkpoints": "trainer",
    "train": "trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
