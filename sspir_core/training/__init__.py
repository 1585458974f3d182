"""Training SSP-IR: data (official pairs or GT + Real-ESRGAN degradations), the accelerate trainer, its config."""

from .config import TrainConfig
from .trainer import Trainer, TrainResult, list_checkpoints, train

__all__ = ["TrainConfig", "TrainResult", "Trainer", "list_checkpoints", "train"]
