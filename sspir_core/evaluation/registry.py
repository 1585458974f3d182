"""The metrics ``sspir eval`` knows: name, direction, what each needs, and how to build its scorer.

``build_scorers`` returns the scorers it could build and, for every other requested metric, why not
(the weight files or packages it needs), so a report can list them as skipped instead of dropping them.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from .weights import WeightsConfig

Kind = Literal["fr", "nr", "set"]
"""fr: compares restored to GT; nr: scores the restored image alone; set: one number for the whole set."""

Scorer = Callable[..., float]
"""fr: ``score(pred, gt)``; nr: ``score(pred)``; set: ``score(pred_dir, gt_dir)``. Images are [1, 3, H, W]."""


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: Kind
    higher_better: bool
    packages: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    """Files relative to the weights folder (torch-hub layout), or ``hf:<repo>/<file>`` in the HF cache."""
    pyiqa_name: str | None = None
    about: str = ""


PYIQA = ("pyiqa",)
METRICS: dict[str, MetricSpec] = {m.name: m for m in (
    MetricSpec("psnr_y", "fr", True, about="PSNR (dB) on BT.601 Y"),
    MetricSpec("ssim_y", "fr", True, about="SSIM on BT.601 Y (Gaussian 11x11, sigma 1.5)"),
    MetricSpec("lpips", "fr", False, PYIQA, ("pyiqa/LPIPS_v0.1_alex-df73285e.pth",
                                             "checkpoints/alexnet-owt-7be5be79.pth"), "lpips", "LPIPS (AlexNet, v0.1)"),
    MetricSpec("dists", "fr", False, PYIQA, ("pyiqa/DISTS_weights-f5e65c96.pth", "checkpoints/vgg16-397923af.pth"),
               "dists", "DISTS"),
    MetricSpec("clip_sim", "fr", True, ("open_clip",), (), None,
               "cosine similarity of OpenCLIP ViT-L/14 image embeddings, restored vs GT"),
    MetricSpec("niqe", "nr", False, PYIQA, ("<niqe>",), "niqe", "NIQE"),
    MetricSpec("musiq", "nr", True, PYIQA, ("pyiqa/musiq_koniq_ckpt-e95806b9.pth",), "musiq", "MUSIQ (KonIQ)"),
    MetricSpec("maniqa", "nr", True, PYIQA, ("pyiqa/ckpt_koniq10k.pt",
                                             "hf:timm/vit_base_patch8_224.augreg2_in21k_ft_in1k/model.safetensors"),
               "maniqa", "MANIQA (KonIQ)"),
    MetricSpec("clipiqa", "nr", True, PYIQA, ("clip/RN50.pt",), "clipiqa", "CLIPIQA (RN50)"),
    MetricSpec("fid", "set", False, PYIQA, ("pyiqa/pt_inception-2015-12-05-6726825d.pth",), "fid",
               "FID between the restored and GT sets"),
)}
DEFAULT_METRICS = tuple(METRICS)


def parse_metric_names(text: str) -> list[str]:
    """``"all"`` or a comma list of names from :data:`METRICS`; unknown names are an error naming the flag."""
    names = list(DEFAULT_METRICS) if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise ValueError(f"--metrics: unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(METRICS)} or all")
    return list(dict.fromkeys(names))


def _hf_cached(spec: str) -> bool:
    repo_file = spec.removeprefix("hf:")
    org, name, filename = repo_file.split("/", 2)
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return isinstance(try_to_load_from_cache(f"{org}/{name}", filename), str)


def required_files(spec: MetricSpec, weights: WeightsConfig) -> list[str]:
    files = [str(weights.niqe_file()) if f == "<niqe>" else f for f in spec.files]
    if spec.name == "clip_sim":
        files.append(str(weights.clip_file()))
    return files


def missing_requirements(spec: MetricSpec, weights: WeightsConfig) -> list[str]:
    """What is absent: ``package X`` or the full path of each missing file (empty: ready to build)."""
    missing = [f"package {p} (pip install 'comfyui-sspir[eval]')" for p in spec.packages
               if importlib.util.find_spec(p) is None]
    for f in required_files(spec, weights):
        if f.startswith("hf:"):
            if not _hf_cached(f):
                missing.append(f"{f.removeprefix('hf:')} in the Hugging Face cache (HF_HOME)")
        elif not (weights.folder / f).is_file():  # an absolute f ignores the folder
            missing.append(str(weights.folder / f))
    return missing


def build_scorers(names: Sequence[str], weights: WeightsConfig, device: torch.device,
                  ) -> tuple[dict[str, Scorer], dict[str, dict[str, object]]]:
    """Scorers for ``names`` and ``{name: {"needs": [...], "reason": str}}`` for those that cannot run."""
    from . import fidelity, learned

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
