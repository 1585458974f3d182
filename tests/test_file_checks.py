"""Header-only checks of model files, and the loader nodes that run them (a damaged file fails at its loader)."""

from __future__ import annotations

import json
import shutil
import struct

import pytest
import torch
from safetensors.torch import save_file

from sspir_core.demo import model_files as demo_models
from sspir_core.errors import CheckpointError
from sspir_core.weights.weights_file import WeightsFile, check_torch_archive, check_weights_file
from tests import fake_comfy


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    demo_models.write_demo_models(root, captioner=False)
    return root


def _header_length(path) -> int:
    return struct.unpack("<Q", path.read_bytes()[:8])[0]


def test_a_sound_file_passes_and_lists_its_tensors(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(3, 4), "b": torch.ones(2, dtype=torch.float16)}, str(path))
    assert sorted(check_weights_file(path)) == ["a", "b"]


def test_a_truncated_file_fails_with_the_tensor_that_no_longer_fits(tmp_path):
    """A 48-byte float32 [3,4] tensor: cut 10 bytes from the end and it ends past the data section."""
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(3, 4)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    n = _header_length(path)
    with pytest.raises(CheckpointError) as err:
        check_weights_file(path)
    msg = str(err.value)
    assert str(path) in msg and "'a'" in msg and f"of only {len(data) - 10 - 8 - n} bytes" in msg
    assert "download or copy it again" in msg


def test_a_header_over_the_format_limit_is_too_large_not_truncated(tmp_path):
    """The file holds all 100 MB + 1 of its claimed header (sparse, so nothing is written): the limit is what
    refuses it, and the message must not send the user to download an intact file again."""
    path = tmp_path / "big-header.safetensors"
    n = 100_000_001
    with path.open("wb") as f:
        f.write(struct.pack("<Q", n) + b"{")
        f.truncate(8 + n + 16)
    with pytest.raises(CheckpointError) as err:
        check_weights_file(path)
    msg = str(err.value)
    assert str(path) in msg and "header is too large (100000001 bytes" in msg and "at most 100000000" in msg
    assert "truncated" not in msg and "download or copy it again" not in msg
    with pytest.raises(CheckpointError) as err:  # the lazy loader, which leaves the header to safetensors
        WeightsFile(path)
    msg = str(err.value)
    assert str(path) in msg and "header is too large (100000001 bytes" in msg and "truncated" not in msg


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda d: d[:5], "shorter than the 8-byte header length"),
        (lambda d: struct.pack("<Q", 10**9) + d[8:], "claims 1000000000 bytes"),
        (lambda d: d[:8] + b"{" * 8 + d[16:], "is not JSON"),
        (lambda d: b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + bytes(range(256)) * 4, "is not JSON"),
    ],
)
def test_damaged_headers_fail_naming_the_file(tmp_path, damage, words):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(3, 4)}, str(path))
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match=words) as err:
        check_weights_file(path)
    assert str(path) in str(err.value)


def test_an_entry_whose_size_disagrees_with_its_shape_fails(tmp_path):
    """float32 [3,4] is 48 bytes; a header that says [3,5] over the same 48 bytes is not a tensor."""
    header = json.dumps({"a": {"dtype": "F32", "shape": [3, 5], "data_offsets": [0, 48]}}).encode()
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(48))
    with pytest.raises(CheckpointError, match=r"should take 60 bytes, its entry gives 48"):
        check_weights_file(path)


def test_torch_files_need_an_intact_zip_directory(tmp_path):
    good = tmp_path / "w.pt"
    torch.save({"a": torch.zeros(3)}, good)
    assert check_weights_file(good) == []
    bad = tmp_path / "cut.pt"
    bad.write_bytes(good.read_bytes()[:-30])  # the zip directory sits at the end
    with pytest.raises(CheckpointError, match="not a readable torch file"):
        check_weights_file(bad)


class _RunsCode:
    """Unpickling this would create a file: the check must never do it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_torch_archives_are_checked_whole_without_unpickling(tmp_path):
    """What resume checks in accelerate's files (optimizer.bin, random_states_0.pkl, ...)."""
    good = tmp_path / "random_states_0.pkl"
    torch.save({"step": 3, "torch_manual_seed": torch.get_rng_state(), "random_state": (3, (1, 2), None)}, good)
    check_torch_archive(good)
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pkl"
    torch.save({"x": _RunsCode(marker)}, evil)
    check_torch_archive(evil)  # structurally whole; refusing its objects is torch.load(weights_only=True)'s job
    assert not marker.exists()
    legacy = tmp_path / "legacy.pt"
    torch.save({"a": torch.zeros(3)}, legacy, _use_new_zipfile_serialization=False)
    check_torch_archive(legacy)
    raw = good.read_bytes()
    for name, data, words in (
        ("empty.pkl", b"", "empty"),
        ("garbage.bin", b"\x00" * 64, "neither a torch zip"),
        ("cut.pkl", raw[: len(raw) // 2], "zip directory, at the end of the file, is missing"),
        ("cut-legacy.pt", legacy.read_bytes()[:40], "cut short or garbled"),
    ):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=words) as e:
            check_torch_archive(tmp_path / name)
        assert str(tmp_path / name) in str(e.value)


@pytest.fixture
def loaders(monkeypatch, demo, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(demo, models)
    fake_comfy.install(monkeypatch, str(models))
    import nodes

    found = {cls.define_schema().node_id: cls for cls in nodes.node_list()}
    return models, found["SSPIRModelLoader"], found["SSPIRClipVisionLoader"]


def _truncate(path, keep: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_a_damaged_base_model_fails_at_the_model_loader(loaders):
    models, model_loader, _ = loaders
    sd = models / "checkpoints" / demo_models.SD_NAME
    _truncate(sd)
    with pytest.raises(CheckpointError) as err:
        model_loader.execute(demo_models.SD_NAME, demo_models.SSPIR_NAME, "auto", "auto", "auto", "auto", "in RAM")
    assert str(sd) in str(err.value)


def test_damaged_or_mismatched_sspir_weights_fail_at_the_model_loader(loaders):
    models, model_loader, _ = loaders
    args = ("auto", "auto", "auto", "auto", "in RAM")
    sspir = models / "sspir" / demo_models.SSPIR_NAME
    with pytest.raises(CheckpointError, match="is a Stable Diffusion 1.x checkpoint .*but base='sd21' was requested"):
        model_loader.execute(demo_models.SD_NAME, demo_models.SSPIR_NAME, "sd21", *args[1:])
    _truncate(sspir)
    with pytest.raises(CheckpointError) as err:
        model_loader.execute(demo_models.SD_NAME, demo_models.SSPIR_NAME, *args)
    assert str(sspir) in str(err.value)


def test_a_base_model_without_its_unet_fails_at_the_model_loader(loaders):
    """The SD file's keys are checked from its header: a file holding only the VAE names what is missing."""
    models, model_loader, _ = loaders
    from safetensors import safe_open

    sd = models / "checkpoints" / demo_models.SD_NAME
    with safe_open(str(sd), "pt") as f:
        meta = f.metadata()
        vae_only = {k: f.get_tensor(k) for k in f.keys() if k.startswith("first_stage_model.")}
        text = {k: f.get_tensor(k) for k in f.keys() if k.startswith("cond_stage_model.")}
    save_file({**vae_only, **text}, str(sd), metadata=meta)
    with pytest.raises(CheckpointError, match=r"lacks \d+ of the \d+ unet weights") as err:
        model_loader.execute(demo_models.SD_NAME, demo_models.SSPIR_NAME, "auto", "auto", "auto", "auto", "in RAM")
    assert str(sd) in str(err.value)


def test_a_damaged_or_wrong_clip_file_fails_at_the_clip_loader(loaders):
    models, _, clip_loader = loaders
    clip = models / "clip_vision" / demo_models.CLIP_VISION_NAME
    assert clip_loader.execute(demo_models.CLIP_VISION_NAME).args[0].path == str(clip)
    _truncate(clip)
    with pytest.raises(CheckpointError) as err:
        clip_loader.execute(demo_models.CLIP_VISION_NAME)
    assert str(clip) in str(err.value)
    save_file({"encoder.down.0.weight": torch.zeros(2)}, str(clip))  # a sound file, but not CLIP vision
    with pytest.raises(CheckpointError, match="is not a CLIP vision model"):
        clip_loader.execute(demo_models.CLIP_VISION_NAME)
