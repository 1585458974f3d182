"""`sspir restore` end to end on tiny random models: folders, odd modes, resume, bad files, errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sspir_core.cli import main

FAST = ["--preset", "tiny-random", "--steps", "2", "--upscale", "2"]


@pytest.fixture
def inputs(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (16, 20, 3), dtype=np.uint8)).save(d / "rgb.png")
    rgba = rng.integers(0, 255, (18, 16, 4), dtype=np.uint8)
    rgba[..., 3] = 128
    Image.fromarray(rgba, "RGBA").save(d / "rgba.png")
    Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8), "L").save(d / "gray.jpg")
    Image.fromarray(rng.integers(0, 65535, (16, 17), dtype=np.uint16)).save(d / "deep.png")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return d


def test_folder_with_odd_modes_and_a_broken_file(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["restore", str(inputs), "-o", str(out), *FAST]) == 1  # one file failed
    err = capsys.readouterr()
    assert "broken.png" in err.err and "untrained" in err.out
    assert sorted(p.name for p in out.iterdir()) == ["deep.png", "gray.png", "rgb.png", "rgba.png"]
    assert Image.open(out / "rgb.png").size == (40, 32)
    rgba = Image.open(out / "rgba.png")
    assert rgba.mode == "RGBA" and rgba.size == (32, 36)
    assert abs(np.asarray(rgba)[..., 3].astype(int) - 128).max() <= 1


def test_existing_outputs_are_skipped_unless_overwrite(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "rgb.png").write_bytes(b"keep me")
    assert main(["restore", str(inputs / "rgb.png"), "-o", str(out), *FAST]) == 0
    assert (out / "rgb.png").read_bytes() == b"keep me"
    assert main(["restore", str(inputs / "rgb.png"), "-o", str(out), *FAST, "--overwrite"]) == 0
    assert Image.open(out / "rgb.png").size == (40, 32)


def test_captions_folder_and_size(inputs, tmp_path):
    caps = tmp_path / "caps"
    caps.mkdir()
    (caps / "rgb.txt").write_text("a noisy picture of nothing")
    out = tmp_path / "out"
    code = main(["restore", str(inputs / "rgb.png"), "-o", str(out), *FAST, "--captions", str(caps),
                 "--size", "24x40", "--scheduler", "unipc", "--color-fix", "wavelet", "--tile", "3",
                 "--tile-overlap", "1", "--vae-tile", "16"])
    assert code == 0 and Image.open(out / "rgb.png").size == (24, 40)


def test_missing_weights_lists_every_file(tmp_path, capsys):
    code = main(["restore", str(tmp_path), "-o", str(tmp_path / "o"), "--sd", str(tmp_path / "sd.safetensors")])
    err = capsys.readouterr().err
    assert code == 2
    for flag in ("--sd", "--sspir", "--clip-vision"):
        assert flag in err
    assert "sd.safetensors' not found" in err and "models/clip_vision" in err and "tiny-random" in err


def test_tiny_preset_loads_official_and_compact_checkpoints(fixture_a, inputs, tmp_path):
    from sspir_core.checkpoint import official_to_compact

    compact = official_to_compact(fixture_a / "checkpoint-7", tmp_path / "tiny.safetensors")
    for weights in (fixture_a / "checkpoint-7", compact):
        out = tmp_path / f"out-{weights.name}"
        assert main(["restore", str(inputs / "gray.jpg"), "-o", str(out), *FAST, "--sspir", str(weights)]) == 0
        assert Image.open(out / "gray.png").size == (32, 32)
