"""LPIPS (VGG, v0.1) as a training loss, from weight files on disk (never downloaded).

A reimplementation of Zhang et al.'s LPIPS as ``richzhang/PerceptualSimilarity`` ``lpips/lpips.py`` and
pyiqa ``pyiqa/archs/lpips_arch.py`` compute it (OSEDiff trains with ``lpips.LPIPS(net='vgg')``,
``cswry/OSEDiff`` ``train_osediff.py``): inputs in [-1, 1] are shifted and scaled per channel, VGG16 features
are taken after relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3, unit-normalised over channels, squared
differences go through non-negative 1x1 "linear" layers, are averaged over space and summed over layers.

Two files, in the torch-hub layout the evaluator uses (``sspir_core/evaluation/metrics.py``):
``checkpoints/vgg16-397923af.pth`` (torchvision's VGG16 ImageNet weights) and
``pyiqa/LPIPS_v0.1_vgg-a78928a0.pth`` (the linear layers; the ``lpips`` package's ``weights/v0.1/vgg.pth`` holds
the same tensors and is accepted under that name too). The network's widths come from the files, so a tiny
random stand-in with the same layer indices goes through this same code path (tests).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

VGG_FILE = "checkpoints/vgg16-397923af.pth"
LIN_FILES = ("pyiqa/LPIPS_v0.1_vgg-a78928a0.pth", "lpips/weights/v0.1/vgg.pth")
# torchvision vgg16 ``features`` indices: convs, and the ReLU after which each LPIPS slice ends.
VGG_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG_POOLS = (4, 9, 16, 23)
SLICE_ENDS = (4, 9, 16, 23, 30)
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
_LIN_KEY = re.compile(r"(?:^|\.)lins?\.?(\d)\.model\.1\.weight$")


class LPIPS(nn.Module):
    """LPIPS distance per image ([B]); frozen (no parameter needs grad), differentiable in its inputs."""

    def __init__(self, vgg_state: dict[str, torch.Tensor], lin_state: dict[str, torch.Tensor]):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(SLICE_ENDS[-1]):
            if i in VGG_CONVS:
                w = vgg_state[f"features.{i}.weight"]
                layers.append(nn.Conv2d(w.shape[1], w.shape[0], w.shape[-1], padding=w.shape[-1] // 2))
            elif i in VGG_POOLS:
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers.append(nn.ReLU(inplace=False))
        self.features = nn.Sequential(*layers)
        self.features.load_state_dict(
            {
                k.removeprefix("features."): v
                for k, v in vgg_state.items()
                if k.startswith("features.") and int(k.split(".")[1]) < SLICE_ENDS[-1]
            }
        )
        self.lins = nn.ParameterList([nn.Parameter(lin_state[i].float()) for i in range(len(SLICE_ENDS))])
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Distances of images ``a`` and ``b`` in [-1, 1] ([B,3,H,W]): returns [B]."""
        x = torch.cat([a, b]).float()
        x = (x - self.shift) / self.scale
        total = x.new_zeros(a.shape[0])
        start = 0
        for k, end in enumerate(SLICE_ENDS):
            x = self.features[start:end](x)
            start = end
            fa, fb = x.chunk(2)
            fa = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            fb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + F.conv2d((fa - fb) ** 2, self.lins[k]).mean(dim=(1, 2, 3))
        return total


def _read(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def lpips_files(folder: str | Path | None) -> tuple[Path, Path]:
    """(VGG backbone file, linear-layer file) under ``folder`` (default: the evaluator's weights folder)."""
    from ..evaluation.weights import default_weights_dir

    root = Path(folder) if folder else default_weights_dir()
    vgg = root / VGG_FILE
    lins = [root / f for f in LIN_FILES]
    lin = next((p for p in lins if p.is_file()), lins[0])
    missing = [p for p in (vgg, lin) if not p.is_file()]
    if missing:
        raise InputError(
            f"LPIPS loss needs {' and '.join(str(p) for p in missing)} (VGG16 ImageNet weights and the LPIPS v0.1 "
            f"linear layers; never downloaded). Put them under --lpips-weights (now {root}) in the torch-hub layout "
            "(checkpoints/vgg16-397923af.pth, pyiqa/LPIPS_v0.1_vgg-a78928a0.pth), or turn the loss off with "
            "--lambda-lpips 0"
        )
    return vgg, lin


def load_lpips(folder: str | Path | None = None, device: torch.device | str = "cpu") -> LPIPS:
    """The frozen LPIPS network from the two files under ``folder``; a missing or wrong file is an error naming it."""
    vgg_file, lin_file = lpips_files(folder)
    vgg = _read(vgg_file)
    lin: dict[int, torch.Tensor] = {}
    for k, v in _read(lin_file).items():
        m = _LIN_KEY.search(k)
        if m:
            lin[int(m.group(1))] = v
    try:
        if sorted(lin) != list(range(len(SLICE_ENDS))):
            raise KeyError(f"linear layers {sorted(lin)} (expected lin0..lin4)")
        return LPIPS(vgg, lin).to(device)
    except (KeyError, RuntimeError) as e:
        raise InputError(f"LPIPS weights {vgg_file} / {lin_file} do not fit a VGG16 LPIPS network: {e}") from e
