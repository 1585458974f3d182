"""How ``sspir eval`` builds a scorer for each metric of :mod:`.metrics`.

``build_scorers`` returns the scorers it could build and, for every other requested metric, why not
(the weight files or packages it needs), so a report can list them as skipped instead of dropping them.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence

import torch

from .metrics import METRICS, MetricSpec, required_files
from .weights import WeightsConfig

_EXTRA = "pip install 'comfyui-sspir[eval]'"
INSTALL_HINTS = {"pyiqa": f"{_EXTRA} && pip install --no-deps 'pyiqa>=0.1.13'"}
"""pyiqa goes in without its declared bitsandbytes, which it never imports and which would make every diffusers
import reach the Hugging Face Hub (see the eval extra in pyproject.toml)."""

Scorer = Callable[..., float]
"""fr: ``score(pred, gt)``; nr: ``score(pred)``; set: ``score(pred_dir, gt_dir)``. Images are [1, 3, H, W]."""


def _hf_cached(spec: str) -> bool:
    repo_file = spec.removeprefix("hf:")
    org, name, filename = repo_file.split("/", 2)
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return isinstance(try_to_load_from_cache(f"{org}/{name}", filename), str)


def missing_requirements(spec: MetricSpec, weights: WeightsConfig) -> list[str]:
    """What is absent: ``package X`` or the full path of each missing file (empty: ready to build)."""
    missing = [
        f"package {p} ({INSTALL_HINTS.get(p, _EXTRA)})" for p in spec.packages if importlib.util.find_spec(p) is None
    ]
    for f in required_files(spec, weights):
        if f.startswith("hf:"):
            if not _hf_cached(f):
                missing.append(f"{f.removeprefix('hf:')} in the Hugging Face cache (HF_HOME)")
        elif not (weights.folder / f).is_file():  # an absolute f ignores the folder
            missing.append(str(weights.folder / f))
    return missing


def build_scorers(
    names: Sequence[str],
    weights: WeightsConfig,
    device: torch.device,
) -> tuple[dict[str, Scorer], dict[str, dict[str, object]]]:
    """Scorers for ``names`` and ``{name: {"needs": [...], "reason": str}}`` for those that cannot run."""
    from . import fidelity, learned  # torchmetrics / pyiqa / open_clip load only when scorers are built

    scorers: dict[str, Scorer] = {}
    skipped: dict[str, dict[str, object]] = {}
    for name in names:
        spec = METRICS[name]
        missing = missing_requirements(spec, weights)
        if missing:
            skipped[name] = {"needs": missing, "reason": "weights or packages not found (nothing is downloaded)"}
            continue
        try:
            if name == "psnr_y":
                scorers[name] = fidelity.psnr_y
            elif name == "ssim_y":
                scorers[name] = fidelity.ssim_y
            elif name == "clip_sim":
                scorers[name] = learned.ClipSimilarity(weights.clip_file(), weights.clip_arch, device)
            else:
                scorers[name] = learned.pyiqa_scorer(spec, weights, device)
        except Exception as exc:  # a present but unusable file: report it, keep the other metrics
            skipped[name] = {"needs": required_files(spec, weights), "reason": f"could not load: {exc}"}
    return scorers, skipped
