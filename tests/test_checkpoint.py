"""Checkpoint I/O: official layout, compact file, converter, and the errors users see."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sspir_core import build_models
from sspir_core.errors import CheckpointError
from sspir_core.weights.checkpoint import (
    check_keys,
    compact_to_official,
    load_compact,
    load_official_checkpoint,
    load_sspir_weights,
    official_to_compact,
    read_compact_metadata,
    stock_unet_from_official,
)

CN_FILE = "controlnet/diffusion_pytorch_model.safetensors"
UNET_FILE = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture
def ckpt(fixture_a, tmp_path) -> Path:
    """A writable copy of the official checkpoint."""
    dst = tmp_path / "checkpoint-7"
    shutil.copytree(fixture_a / "checkpoint-7", dst)
    for f in dst.rglob("*"):
        f.chmod(0o755 if f.is_dir() else 0o644)
    return dst


def _same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_round_trip_official_compact_official_is_lossless(fixture_a, tmp_path):
    src = fixture_a / "checkpoint-7"
    compact = official_to_compact(src, tmp_path / "sspir.safetensors")
    meta = read_compact_metadata(compact)
    assert meta["base"] == "custom" and meta["format_version"] == "1"
    # The compact file holds no SD UNet weight.
    keys = load_file(str(compact)).keys()
    assert not any(k.startswith("unet.") and "_attentions." not in k for k in keys)

    out = compact_to_official(compact, stock_unet_from_official(src), tmp_path / "again")
    for rel in (UNET_FILE, CN_FILE):
        assert _same_tensors(load_file(str(src / rel)), load_file(str(out / rel))), rel
    a = torch.load(src / "refine/refine.pt", weights_only=True)
    b = torch.load(out / "refine/refine.pt", weights_only=True)
    assert _same_tensors(a, b)
    # What we wrote loads again through the official-layout loader.
    assert load_official_checkpoint(out).base == "custom"


def test_compact_needs_an_sd_unet_of_the_same_structure(fixture_a, tmp_path):
    compact = official_to_compact(fixture_a / "checkpoint-7", tmp_path / "sspir.safetensors")
    with pytest.raises(CheckpointError, match="holds only the SSP-IR parts"):
        load_sspir_weights(compact)
    sd15 = build_models("sd15", device="meta").unet
    with pytest.raises(CheckpointError, match="trained on a custom-size UNet.*given is SD1.5"):
        load_compact(compact, sd15)


def test_bin_weights_extra_config_keys_and_module_prefix(ckpt, fixture_a):
    state = load_file(str(ckpt / UNET_FILE))
    (ckpt / UNET_FILE).unlink()
    torch.save({f"module.{k}": v for k, v in state.items()}, ckpt / "unet/diffusion_pytorch_model.bin")
    cfg = json.loads((ckpt / "unet/config.json").read_text())
    cfg["_name_or_path"] = "/some/where/checkpoint-6"
    (ckpt / "unet/config.json").write_text(json.dumps(cfg))
    refine = torch.load(ckpt / "refine/refine.pt", weights_only=True)
    torch.save({f"module.{k}": v for k, v in refine.items()}, ckpt / "refine/refine.pt")

    models = load_official_checkpoint(ckpt)
    ref = load_official_checkpoint(fixture_a / "checkpoint-7")
    assert _same_tensors(models.unet.state_dict(), ref.unet.state_dict())
    assert _same_tensors(models.refine.state_dict(), ref.refine.state_dict())


def test_truncated_file_names_the_file(ckpt):
    f = ckpt / CN_FILE
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError) as e:
        load_official_checkpoint(ckpt)
    assert str(f) in str(e.value) and "truncated" in str(e.value)


def test_missing_keys_are_named(ckpt):
    state = load_file(str(ckpt / CN_FILE))
    gone = sorted(k for k in state if "image_attentions" in k)[:2]
    save_file({k: v for k, v in state.items() if k not in gone}, str(ckpt / CN_FILE))
    with pytest.raises(CheckpointError) as e:
        load_official_checkpoint(ckpt)
    msg = str(e.value)
    assert "missing" in msg and gone[0] in msg and CN_FILE.split("/")[0] in msg


def test_checkpoint_for_another_base_is_refused_with_bad_keys(fixture_a):
    with pytest.raises(CheckpointError) as e:
        load_official_checkpoint(fixture_a / "checkpoint-7", base="sd15")
    msg = str(e.value)
    assert "base 'sd15'" in msg and "diffusion_pytorch_model.safetensors" in msg
    assert "other shapes" in msg and "conv_in.weight" in msg


def test_sd21_state_against_sd15_model_names_the_cross_attention_keys():
    sd15 = build_models("sd15", device="meta").unet.state_dict()
    sd21 = build_models("sd21", device="meta").unet.state_dict()
    with pytest.raises(CheckpointError) as e:
        check_keys(sd15, sd21, "model.safetensors", "UNet", "sd15")
    msg = str(e.value)
    # 768 (CLIP-L text) vs 1024 (OpenCLIP-H text): the text cross-attention K/V differ.
    assert "attn2.to_k.weight: file [320, 1024] vs model [320, 768]" in msg and "another base" in msg


def test_final_save_bug_folder_is_explained(ckpt):
    shutil.copy(ckpt / "unet/config.json", ckpt / "controlnet/config.json")
    with pytest.raises(CheckpointError, match="final save overwrites the ControlNet"):
        load_official_checkpoint(ckpt)


def test_missing_folders_and_files(tmp_path, ckpt):
    with pytest.raises(CheckpointError, match="not found"):
        load_official_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no 'unet/' folder"):
        load_official_checkpoint(tmp_path / "empty")
    (ckpt / "refine/refine.pt").unlink()
    with pytest.raises(CheckpointError, match="no Refine-layer weights"):
        load_official_checkpoint(ckpt)


def test_not_a_compact_file(tmp_path):
    f = tmp_path / "x.safetensors"
    save_file({"a": torch.zeros(1)}, str(f), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="not an SSP-IR compact file"):
        read_compact_metadata(f)


def test_pickle_refused_by_the_safe_loader_says_so(tmp_path):
    import argparse

    from sspir_core.weights import WeightsFile

    path = tmp_path / "refine.pt"
    torch.save({"w": torch.zeros(2), "args": argparse.Namespace(lr=1)}, path)  # an object besides tensors
    with pytest.raises(CheckpointError) as e:
        WeightsFile(path)
    message = str(e.value)
    assert str(path) in message and "refused by the safe loader" in message and "argparse.Namespace" in message
    assert "truncated" not in message


@pytest.mark.parametrize("umask", [0o022, 0o002], ids=["umask022", "umask002"])
def test_weight_files_get_the_umask_permissions(fixture_a, tmp_path, umask):
    """Every file of a checkpoint is 0666 less the umask, as open() makes it (safetensors' own writer: 0600)."""
    import os
    import stat

    from sspir_core.weights.checkpoint import save_compact, save_official_checkpoint

    models = load_official_checkpoint(fixture_a / "checkpoint-7")
    old = os.umask(umask)
    try:
        save_official_checkpoint(models, tmp_path / "out")
        save_compact(models, tmp_path / "out" / "sspir.safetensors")
    finally:
        os.umask(old)
    files = sorted(p for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert {p.relative_to(tmp_path / "out").as_posix() for p in files} == {
        UNET_FILE,
        CN_FILE,
        "unet/config.json",
        "controlnet/config.json",
        "refine/refine.pt",
        "sspir.safetensors",
    }
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: oct(0o666 & ~umask) for p in files}


def test_same_model_same_compact_bytes(fixture_a, tmp_path):
    """Two saves of the same tensors and metadata are byte-identical, so a checksum identifies a model."""
    import hashlib

    from sspir_core.weights.checkpoint import save_compact

    models = load_official_checkpoint(fixture_a / "checkpoint-7")
    digests = set()
    for i in range(4):  # safetensors' metadata order changed on each write (7 keys: 5040 orders)
        path = save_compact(models, tmp_path / f"{i}.safetensors")
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1
    meta = read_compact_metadata(tmp_path / "0.safetensors")
    assert meta["format"] == "sspir-compact" and meta["base"] == models.base
    assert _same_tensors(load_file(tmp_path / "0.safetensors"), load_file(tmp_path / "3.safetensors"))
    assert not list(tmp_path.glob(".*partial"))  # no temporary file left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    from sspir_core import files

    target = tmp_path / "state.json"
    target.write_text("old")

    def crash(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", crash)
    with pytest.raises(OSError, match="No space"):
        files.write_text_atomic(target, "new and longer")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
