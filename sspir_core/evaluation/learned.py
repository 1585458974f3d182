"""Learned metrics: pyiqa's implementations (LPIPS, DISTS, NIQE, MUSIQ, MANIQA, CLIPIQA, FID) and the
paper's semantic-fidelity measure (OpenCLIP image-embedding similarity). Built only after
``registry.missing_requirements`` found every file, so nothing downloads."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from ..weights import CLIP_MEAN, CLIP_STD, read_state_dict
from .metrics import MetricSpec, required_files
from .weights import WeightsConfig, check_torch_pickle, hub_dir


def _niqe_mat(path: Path, scratch: Path) -> Path:
    """pyiqa reads a MATLAB .mat; BasicSR ships the same model as .npz: convert it (no pickles allowed)."""
    if path.suffix.lower() == ".mat":
        return path
    import numpy as np
    import scipy.io

    with np.load(path, allow_pickle=False) as data:
        mat = {"mu_prisparam": data["mu_pris_param"], "cov_prisparam": data["cov_pris_param"]}
    out = scratch / "niqe_modelparameters.mat"
    scipy.io.savemat(out, mat)
    return out


def pyiqa_scorer(spec: MetricSpec, weights: WeightsConfig, device: torch.device):
    """A pyiqa metric wrapped as ``score(pred[, gt]) -> float`` (``score(pred_dir, gt_dir)`` for FID)."""
    import pyiqa

    for f in required_files(spec, weights):
        path = weights.folder / f
        if path.suffix in (".pth", ".pt") and not f.startswith("clip/"):  # clip/*.pt is TorchScript
            check_torch_pickle(path)
    kwargs = {}
    with tempfile.TemporaryDirectory() as scratch, hub_dir(weights.folder):
        if spec.name == "niqe":
            kwargs["pretrained_model_path"] = str(_niqe_mat(weights.niqe_file(), Path(scratch)))
        metric = pyiqa.create_metric(spec.pyiqa_name, device=device, **kwargs)
    metric.eval()

    if spec.kind == "set":

        def score_set(pred_dir: Path, gt_dir: Path) -> float:
            return float(metric(str(pred_dir), str(gt_dir), verbose=False, num_workers=0))  # no worker processes

        return score_set

    @torch.no_grad()
    def score(pred: torch.Tensor, gt: torch.Tensor | None = None) -> float:
        args = (pred.to(device),) if spec.kind == "nr" else (pred.to(device), gt.to(device))
        return float(metric(*args).mean())

    return score


class ClipSimilarity:
    """Cosine similarity between OpenCLIP image embeddings of the restored image and its GT.

    The architecture comes from open_clip's config by name (``ViT-L-14`` by default; tests register a tiny
    one); weights come from a local file read safely (safetensors or ``weights_only`` pickle).
    Preprocessing follows CLIP's: bicubic resize of the short side, centre crop, CLIP mean/std.
    """

    def __init__(self, path: Path, arch: str = "ViT-L-14", device: torch.device | str = "cpu"):
        import open_clip

        model = open_clip.create_model(arch, pretrained=None, device="cpu")
        state = read_state_dict(path)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        model.load_state_dict(state, strict=False)  # text tower keys may be absent: only the image tower is used
        missing = [k for k in model.visual.state_dict() if f"visual.{k}" not in state]
        if missing:
            raise ValueError(f"{path} lacks {len(missing)} image-tower weights of {arch} (e.g. visual.{missing[0]})")
        self.visual = model.visual.to(device).eval()
        size = self.visual.image_size
        self.size = size[0] if isinstance(size, (tuple, list)) else int(size)
        self.device = torch.device(device)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        scale = self.size / min(h, w)
        x = F.interpolate(
            x,
            size=(max(self.size, round(h * scale)), max(self.size, round(w * scale))),
            mode="bicubic",
            align_corners=False,
            antialias=True,
        ).clamp(0, 1)
        top, left = (x.shape[-2] - self.size) // 2, (x.shape[-1] - self.size) // 2
        x = x[..., top : top + self.size, left : left + self.size]
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        return F.normalize(self.visual(((x - mean) / std).to(self.device)).float(), dim=-1)

    @torch.no_grad()
    def __call__(self, pred: torch.Tensor, gt: torch.Tensor) -> float:
        return float((self._embed(pred) * self._embed(gt)).sum(dim=-1).mean())
