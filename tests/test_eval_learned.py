"""Learned-metric wiring with stand-in weights on disk: files are found in the torch-hub layout, nothing is
downloaded, unsafe pickles are refused, and the OpenCLIP similarity runs from a local file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sspir_core.evaluation import METRICS, WeightsConfig, build_scorers
from sspir_core.evaluation.learned import ClipSimilarity

skdata = pytest.importorskip("skimage.data", reason="scikit-image is in the test extra")
TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def photo(crop=(slice(100, 164), slice(180, 244))) -> torch.Tensor:
    return torch.from_numpy(skdata.astronaut()[crop] / 255.0).float().permute(2, 0, 1)[None]


def files_in(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def test_registry_file_names_are_the_ones_pyiqa_and_torchvision_fetch():
    """If pyiqa renames a file, the skip message would send users after the wrong one: check the sources."""
    import importlib.util

    roots = [Path(importlib.util.find_spec(m).origin).parent for m in ("pyiqa", "torchvision")]
    sources = "".join(p.read_text(errors="ignore") for r in roots for p in r.rglob("*.py"))
    for spec in METRICS.values():
        for f in spec.files:
            if f != "<niqe>" and not f.startswith("hf:"):
                assert Path(f).name in sources, f"{spec.name}: {f} not named in pyiqa/torchvision"


@pytest.fixture(scope="module")
def lpips_weights(tmp_path_factory) -> Path:
    """Random AlexNet + LPIPS heads saved where torchvision and pyiqa would cache the real files."""
    pytest.importorskip("pyiqa")
    import torchvision

    from sspir_core.evaluation.weights import hub_dir

    folder = tmp_path_factory.mktemp("hub")
    (folder / "checkpoints").mkdir()
    (folder / "pyiqa").mkdir()
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet().state_dict(), folder / "checkpoints" / "alexnet-owt-7be5be79.pth")
    from pyiqa.archs.lpips_arch import LPIPS

    with hub_dir(folder):
        heads = {k: v for k, v in LPIPS(pretrained=False).state_dict().items() if not k.startswith("net.")}
    torch.save(heads, folder / "pyiqa" / "LPIPS_v0.1_alex-df73285e.pth")
    return folder


def test_lpips_runs_from_local_files_without_downloading(lpips_weights):
    before = files_in(lpips_weights)
    old_hub = torch.hub.get_dir()
    scorers, skipped = build_scorers(["lpips"], WeightsConfig(lpips_weights), torch.device("cpu"))
    assert not skipped and torch.hub.get_dir() == old_hub  # the hub folder is restored afterwards
    x = photo()
    noisy = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    assert scorers["lpips"](x, x.clone()) == pytest.approx(0.0, abs=1e-6)
    assert scorers["lpips"](noisy, x) > 0
    assert files_in(lpips_weights) == before


def test_a_pickle_that_needs_unpickling_code_is_refused(lpips_weights, tmp_path):
    bad = tmp_path / "hub"
    (bad / "pyiqa").mkdir(parents=True)
    (bad / "checkpoints").symlink_to(lpips_weights / "checkpoints")
    torch.save({"model": np.array([1, 2])}, bad / "pyiqa" / "LPIPS_v0.1_alex-df73285e.pth")  # needs numpy globals
    scorers, skipped = build_scorers(["lpips"], WeightsConfig(bad), torch.device("cpu"))
    assert not scorers and "weights_only=True" in skipped["lpips"]["reason"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    import open_clip
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("clip")
    (folder / "sspir-test-tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(folder / "sspir-test-tiny-clip.json")
    torch.manual_seed(0)
    model = open_clip.create_model("sspir-test-tiny-clip", pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "tiny.safetensors")
    return folder


def test_clip_similarity_from_a_local_open_clip_file(tiny_clip):
    sim = ClipSimilarity(tiny_clip / "tiny.safetensors", "sspir-test-tiny-clip")
    x, other = photo(), photo((slice(300, 364), slice(0, 64)))
    assert sim(x, x.clone()) == pytest.approx(1.0, abs=1e-5)
    assert -1 <= sim(x, other) < 0.9999
    weights = WeightsConfig(
        tiny_clip / "empty", clip_model=tiny_clip / "tiny.safetensors", clip_arch="sspir-test-tiny-clip"
    )
    scorers, skipped = build_scorers(["clip_sim"], weights, torch.device("cpu"))
    assert not skipped and scorers["clip_sim"](x, other) == pytest.approx(sim(x, other), abs=1e-6)


def test_clip_similarity_names_missing_image_tower_weights(tiny_clip, tmp_path):
    from safetensors.torch import load_file, save_file

    state = {k: v for k, v in load_file(tiny_clip / "tiny.safetensors").items() if k != "visual.proj"}
    save_file(state, tmp_path / "partial.safetensors")
    with pytest.raises(ValueError, match="visual.proj"):
        ClipSimilarity(tmp_path / "partial.safetensors", "sspir-test-tiny-clip")
