"""Where the learned metrics' weights live, and a check that they are all there before anything loads.

The weights folder has the layout of a torch hub cache (``torch.hub.get_dir()``, by default
``~/.cache/torch/hub``), which is where pyiqa and torchvision put these files when they are allowed to
download: pyiqa's files in ``pyiqa/``, torchvision backbones in ``checkpoints/``, OpenAI CLIP in ``clip/``.
A machine that once ran pyiqa online therefore already has them; an offline one gets them copied in.
Every file a metric needs is checked before the metric is built, so nothing is ever downloaded: a metric
with a missing file is reported as skipped, naming the file.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError

NIQE_PYIQA_FILE = "pyiqa/niqe_modelparameters.mat"
NIQE_BASICSR_FILE = "niqe_pris_params.npz"
"""BasicSR bundles the same NIQE pristine-image model as ``niqe_pris_params.npz`` inside its sdist
(``basicsr/metrics/``); ``scripts/fetch_niqe_params.sh`` extracts it with pip, no other download."""
CLIP_SIM_FILE = "open_clip/ViT-L-14.safetensors"

_HUB_LOCK = threading.Lock()


def default_weights_dir() -> Path:
    """``$SSPIR_EVAL_WEIGHTS`` if set, else torch's hub cache (where pyiqa itself keeps its weights)."""
    env = os.environ.get("SSPIR_EVAL_WEIGHTS")
    if env:
        return Path(env).expanduser()
    import torch.hub

    return Path(torch.hub.get_dir())


@dataclass(frozen=True)
class WeightsConfig:
    """Where to look: ``folder`` (torch-hub layout) plus explicit files that override it."""

    folder: Path
    niqe_params: Path | None = None
    clip_model: Path | None = None
    clip_arch: str = "ViT-L-14"

    def niqe_file(self) -> Path:
        """The explicit ``--niqe-params`` file, else pyiqa's .mat, else BasicSR's .npz (first that exists)."""
        if self.niqe_params is not None:
            return self.niqe_params
        mat = self.folder / NIQE_PYIQA_FILE
        return mat if mat.is_file() else self.folder / NIQE_BASICSR_FILE

    def clip_file(self) -> Path:
        return self.clip_model if self.clip_model is not None else self.folder / CLIP_SIM_FILE


def check_torch_pickle(path: Path) -> None:
    """Refuse a ``.pth``/``.pt`` that needs arbitrary unpickling: pyiqa loads with ``weights_only=False``,
    so each file is first read here with ``weights_only=True`` (a plain tensor file passes)."""
    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path}: refused, it does not load with torch.load(weights_only=True) ({exc}); "
            "use the original file from the metric's authors"
        ) from exc


@contextlib.contextmanager
def hub_dir(folder: Path) -> Iterator[None]:
    """Point torch.hub (torchvision backbones, CLIP) and pyiqa's cache at ``folder`` while metrics are built.

    pyiqa reads its cache folder from a module global fixed at import time, so it is set and restored here
    too; a lock keeps two builders in one process from interleaving.
    """
    import pyiqa.utils.download_util as pyiqa_download
    import torch.hub

    with _HUB_LOCK:
        old_hub, old_cache = torch.hub.get_dir(), pyiqa_download.DEFAULT_CACHE_DIR
        torch.hub.set_dir(str(folder))
        pyiqa_download.DEFAULT_CACHE_DIR = str(folder / "pyiqa")
        try:
            yield
        finally:
            torch.hub.set_dir(old_hub)
            pyiqa_download.DEFAULT_CACHE_DIR = old_cache
