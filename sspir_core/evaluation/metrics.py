"""The metrics ``sspir eval`` knows: name, direction, and what each needs (packages, weight files).

Plain data and cheap helpers only; :mod:`.registry` builds the scorers from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .weights import WeightsConfig

Kind = Literal["fr", "nr", "set"]
"""fr: compares restored to GT; nr: scores the restored image alone; set: one number for the whole set."""


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
METRICS: dict[str, MetricSpec] = {
    m.name: m
    for m in (
        MetricSpec("psnr_y", "fr", True, about="PSNR (dB) on BT.601 Y"),
        MetricSpec("ssim_y", "fr", True, about="SSIM on BT.601 Y (Gaussian 11x11, sigma 1.5)"),
        MetricSpec(
            "lpips",
            "fr",
            False,
            PYIQA,
            ("pyiqa/LPIPS_v0.1_alex-df73285e.pth", "checkpoints/alexnet-owt-7be5be79.pth"),
            "lpips",
            "LPIPS (AlexNet, v0.1)",
        ),
        MetricSpec(
            "dists",
            "fr",
            False,
            PYIQA,
            ("pyiqa/DISTS_weights-f5e65c96.pth", "checkpoints/vgg16-397923af.pth"),
            "dists",
            "DISTS",
        ),
        MetricSpec(
            "clip_sim",
            "fr",
            True,
            ("open_clip",),
            (),
            None,
            "cosine similarity of OpenCLIP ViT-L/14 image embeddings, restored vs GT",
        ),
        MetricSpec("niqe", "nr", False, PYIQA, ("<niqe>",), "niqe", "NIQE"),
        MetricSpec("musiq", "nr", True, PYIQA, ("pyiqa/musiq_koniq_ckpt-e95806b9.pth",), "musiq", "MUSIQ (KonIQ)"),
        MetricSpec(
            "maniqa",
            "nr",
            True,
            PYIQA,
            ("pyiqa/ckpt_koniq10k.pt", "hf:timm/vit_base_patch8_224.augreg2_in21k_ft_in1k/model.safetensors"),
            "maniqa",
            "MANIQA (KonIQ)",
        ),
        MetricSpec("clipiqa", "nr", True, PYIQA, ("clip/RN50.pt",), "clipiqa", "CLIPIQA (RN50)"),
        MetricSpec(
            "fid",
            "set",
            False,
            PYIQA,
            ("pyiqa/pt_inception-2015-12-05-6726825d.pth",),
            "fid",
            "FID between the restored and GT sets",
        ),
    )
}
DEFAULT_METRICS = tuple(METRICS)


def parse_metric_names(text: str) -> list[str]:
    """``"all"`` or a comma list of names from :data:`METRICS`; unknown names are an error naming the flag."""
    names = list(DEFAULT_METRICS) if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise ValueError(
            f"--metrics: unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(METRICS)} or all"
        )
    return list(dict.fromkeys(names))


def required_files(spec: MetricSpec, weights: WeightsConfig) -> list[str]:
    files = [str(weights.niqe_file()) if f == "<niqe>" else f for f in spec.files]
    if spec.name == "clip_sim":
        files.append(str(weights.clip_file()))
    return files
