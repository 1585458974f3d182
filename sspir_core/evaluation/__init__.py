"""Evaluation of restored images against ground truth: pairing, metrics, tables and pictures.

Only the cheap modules are imported here; pyiqa, torchmetrics and open_clip load when a metric is built.
"""

from .metrics import DEFAULT_METRICS, METRICS, MetricSpec, parse_metric_names
from .pairing import Pair, Pairing, pair_images
from .protocol import PROTOCOLS, Protocol, get_protocol
from .registry import build_scorers, missing_requirements
from .runner import EvalResult, evaluate
from .weights import WeightsConfig, default_weights_dir

__all__ = [
    "DEFAULT_METRICS",
    "METRICS",
    "PROTOCOLS",
    "EvalResult",
    "MetricSpec",
    "Pair",
    "Pairing",
    "Protocol",
    "WeightsConfig",
    "build_scorers",
    "default_weights_dir",
    "evaluate",
    "get_protocol",
    "missing_requirements",
    "pair_images",
    "parse_metric_names",
]
