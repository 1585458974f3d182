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


@pytest.mark.slow  # restores a folder of images
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
    code = main(
        [
            "restore",
            str(inputs / "rgb.png"),
            "-o",
            str(out),
            *FAST,
            "--captions",
            str(caps),
            "--size",
            "24x40",
            "--scheduler",
            "unipc",
            "--color-fix",
            "wavelet",
            "--tile",
            "3",
            "--tile-overlap",
            "1",
            "--vae-tile",
            "16",
        ]
    )
    assert code == 0 and Image.open(out / "rgb.png").size == (24, 40)


def test_missing_weights_lists_every_file(tmp_path, capsys):
    code = main(["restore", str(tmp_path), "-o", str(tmp_path / "o"), "--sd", str(tmp_path / "sd.safetensors")])
    err = capsys.readouterr().err
    assert code == 2
    for flag in ("--sd", "--sspir", "--clip-vision"):
        assert flag in err
    assert "sd.safetensors' not found" in err and "models/clip_vision" in err and "tiny-random" in err


def test_tiny_preset_loads_official_and_compact_checkpoints(fixture_a, inputs, tmp_path):
    from sspir_core.weights.checkpoint import official_to_compact

    compact = official_to_compact(fixture_a / "checkpoint-7", tmp_path / "tiny.safetensors")
    for weights in (fixture_a / "checkpoint-7", compact):
        out = tmp_path / f"out-{weights.name}"
        assert main(["restore", str(inputs / "gray.jpg"), "-o", str(out), *FAST, "--sspir", str(weights)]) == 0
        assert Image.open(out / "gray.png").size == (32, 32)


# ------------------------------------------------------------------ checked before any model is loaded


@pytest.fixture
def no_models(monkeypatch):
    """Fail the test if a model is loaded: these errors must come before any work."""
    import sspir_core.cli.restore as restore_cli

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(restore_cli, "build_pipeline", refuse)


def test_output_folder_holding_the_inputs_is_refused_even_with_overwrite(inputs, capsys, no_models):
    before = {p.name: p.read_bytes() for p in inputs.iterdir()}
    assert main(["restore", str(inputs), "-o", str(inputs), *FAST, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "replace the input" in err and "rgb.png" in err and "skipping" not in err
    assert {p.name: p.read_bytes() for p in inputs.iterdir()} == before


def test_an_output_that_is_an_input_through_a_link_is_refused(tmp_path, inputs, capsys, no_models):
    out = tmp_path / "out"
    out.mkdir()
    (out / "rgb.png").hardlink_to(inputs / "rgb.png")
    assert main(["restore", str(inputs / "rgb.png"), "-o", str(out), *FAST, "--overwrite"]) == 2
    assert "replace the input" in capsys.readouterr().err


def test_two_inputs_with_one_stem_stop_before_any_work(tmp_path, inputs, capsys, no_models):
    Image.open(inputs / "rgb.png").save(inputs / "rgb.jpg")
    out = tmp_path / "out"
    assert main(["restore", str(inputs), "-o", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert "same output" in err and "rgb.jpg" in err and "rgb.png" in err
    assert list(out.iterdir()) == []


def test_a_missing_captions_folder_is_an_error(tmp_path, inputs, capsys, no_models):
    code = main(
        ["restore", str(inputs / "rgb.png"), "-o", str(tmp_path / "o"), *FAST, "--captions", str(tmp_path / "captionz")]
    )
    assert code == 2 and "--captions" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # stopped before creating anything


@pytest.mark.parametrize("output", ["a_file", "a_file/sub", "unwritable"])
def test_unusable_output_folder_is_found_before_models_load(tmp_path, inputs, capsys, no_models, output):
    import os

    (tmp_path / "a_file").write_text("not a folder")
    if output == "unwritable":
        target = tmp_path / "ro"
        target.mkdir(mode=0o555)
        if os.geteuid() == 0:  # root writes anywhere a mode allows nothing; a read-only sysfs stops it
            target = "/sys"
    else:
        target = tmp_path / output
    assert main(["restore", str(inputs / "rgb.png"), "-o", str(target), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: -o ") and "Traceback" not in err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--cfg", "nan"], "--cfg must be a finite number"),
        (["--cfg", "inf"], "--cfg must be a finite number"),
        (["--size", "0x0"], "--size must be WIDTHxHEIGHT"),
        (["--size", "big"], "--size must be WIDTHxHEIGHT"),
        (["--upscale", "nan"], "--upscale must be a positive number"),
        (["--upscale", "0"], "--upscale must be a positive number"),
        (["--steps", "0"], "--steps must be between 1 and 998"),
        (["--tile", "-3"], "--tile must be >= 0"),
        (["--tile", "8", "--tile-overlap", "8"], "--tile-overlap (8) must be smaller than --tile (8)"),
        (["--tile-overlap", "-1"], "--tile-overlap must be between 0 and 256"),
        (["--vae-tile", "4"], "--vae-tile must be between 8 and 8192"),
        (["--cfg", "0.5"], "--cfg must be a finite number between 1 and 30"),
        (["--conditioning-scale", "nan"], "--conditioning-scale must be a finite number"),
        (["--seed", "-1"], "--seed must be between 0 and"),
        (["--device", "cuda:banana"], "--device 'cuda:banana' is not a device"),
    ],
)
def test_every_option_is_checked_first_and_named_as_typed(tmp_path, inputs, capsys, no_models, flags, message):
    assert main(["restore", str(inputs / "rgb.png"), "-o", str(tmp_path / "o"), *FAST, *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o" / "rgb.png").exists()


def test_cuda_on_a_machine_without_cuda_is_a_clear_error(tmp_path, inputs, capsys, no_models, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["restore", str(inputs / "rgb.png"), "-o", str(tmp_path / "o"), *FAST, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "--device cuda: not available on this machine" in err and "Traceback" not in err


def test_a_huge_output_is_announced_before_any_model_loads(tmp_path, capsys, no_models):
    big = tmp_path / "big.png"
    Image.new("RGB", (1100, 1000)).save(big)
    assert main(["restore", str(big), "-o", str(tmp_path / "o"), "--preset", "tiny-random"]) == 2
    out = capsys.readouterr().out
    assert "4400x4000 px" in out and "--upscale or --size" in out


# ------------------------------------------------------------------ what the run writes and reports


def _png_bits(path) -> int:
    return path.read_bytes()[24]


def test_16_bit_input_gives_16_bit_output_and_animation_is_announced(tmp_path, inputs, capsys):
    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "blue", "green")]
    frames[0].save(inputs / "anim.gif", save_all=True, append_images=frames[1:])
    out = tmp_path / "out"
    files = [str(inputs / n) for n in ("deep.png", "rgb.png", "anim.gif")]
    assert main(["restore", *files, "-o", str(out), *FAST]) == 0
    assert _png_bits(out / "deep.png") == 16 and _png_bits(out / "rgb.png") == 8
    assert "anim.gif has 3 frames; only the first is restored" in capsys.readouterr().out


def test_any_failure_of_one_file_is_named_once_and_the_rest_continue(tmp_path, inputs, capsys, monkeypatch):
    import sspir_core.restore.pipeline as pipeline

    real = pipeline.restore_image
    calls = []

    def flaky(pipe, image, *a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug that is not ours")
        return real(pipe, image, *a, **k)

    monkeypatch.setattr(pipeline, "restore_image", flaky)
    caps = tmp_path / "caps"
    caps.mkdir()
    (caps / "rgba.txt").write_bytes(b"caf\xe9 latin-1")
    out = tmp_path / "out"
    files = [str(inputs / n) for n in ("gray.jpg", "rgb.png", "rgba.png")]
    assert main(["restore", *files, "-o", str(out), *FAST, "--captions", str(caps)]) == 1
    captured = capsys.readouterr()
    assert f"failed: {inputs / 'gray.jpg'}: RuntimeError: a bug that is not ours" in captured.err
    assert "Traceback" not in captured.err
    assert f"caption file {caps / 'rgba.txt'} is not UTF-8" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["rgb.png"]
    assert "no caption file in" in captured.out and "gray.jpg, rgb.png" in captured.out

    calls.clear()
    assert main(["restore", files[0], "-o", str(tmp_path / "out2"), *FAST, "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_the_caption_file_is_really_used(tmp_path, inputs, monkeypatch):
    import sspir_core.restore.pipeline as pipeline

    seen = []
    real = pipeline.restore_image
    monkeypatch.setattr(
        pipeline, "restore_image", lambda p, img, cap, *a, **k: seen.append(cap) or real(p, img, cap, *a, **k)
    )
    caps = tmp_path / "caps"
    caps.mkdir()
    (caps / "rgb.txt").write_text("  a red bicycle by a wall\n")
    assert (
        main(
            [
                "restore",
                str(inputs / "rgb.png"),
                "-o",
                str(tmp_path / "o"),
                *FAST,
                "--captions",
                str(caps),
                "--caption",
                "fallback",
            ]
        )
        == 0
    )
    assert seen == ["a red bicycle by a wall"]


def test_sampling_seed_does_not_change_the_tiny_presets_models():
    """--seed is the sampling seed: the toy VAE/text/CLIP parts (frozen under trained --sspir weights) stay the same."""
    import argparse

    import torch

    from sspir_core.cli.restore import build_pipeline

    pipes = [
        build_pipeline(argparse.Namespace(preset="tiny-random", sspir=None, seed=s), "cpu", torch.float32)
        for s in (0, 5)
    ]
    for a, b in zip(pipes[0].vae.state_dict().values(), pipes[1].vae.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(pipes[0].text_encoder.state_dict().values(), pipes[1].text_encoder.state_dict().values()):
        assert torch.equal(a, b)
