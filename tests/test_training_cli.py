"""`sspir train` / `sspir make-pairs` options: config file + flags, and clear errors that name the flag or file."""

from __future__ import annotations

import pytest

from sspir_core.cli import build_parser
from sspir_core.cli import main as cli_main
from sspir_core.cli.train import config_from_args
from sspir_core.errors import InputError


def test_defaults_are_the_official_recipe():
    cfg = config_from_args(
        build_parser().parse_args(["train", "--preset", "tiny-random", "--data", "d", "--output", "o"])
    )
    assert (cfg.lr, cfg.batch_size, cfg.grad_accum, cfg.max_steps) == (5e-5, 16, 2, 100_000)
    assert (cfg.adam_beta1, cfg.adam_beta2, cfg.weight_decay, cfg.max_grad_norm) == (0.9, 0.999, 1e-2, 1.0)
    assert (cfg.resolution, cfg.caption_dropout, cfg.mixed_precision, cfg.lr_scheduler) == (
        512,
        0.5,
        "fp16",
        "constant",
    )


def test_config_file_then_flags(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "lr: 1.0e-4\nbatch-size: 8\ndata: pairs\npreset: tiny-random\noutput: out\ngradient_checkpointing: true\n"
    )
    args = build_parser().parse_args(
        ["train", "--config", str(tmp_path / "c.yaml"), "--batch-size", "2", "--no-gradient-checkpointing"]
    )
    cfg = config_from_args(args)
    assert (cfg.lr, cfg.batch_size, cfg.data, cfg.gradient_checkpointing) == (1e-4, 2, ["pairs"], False)


def test_config_file_unknown_key(tmp_path):
    (tmp_path / "c.json").write_text('{"learning_rate": 1}')
    with pytest.raises(InputError, match="unknown option.*learning_rate"):
        config_from_args(build_parser().parse_args(["train", "--config", str(tmp_path / "c.json")]))


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "--data", "d", "--preset", "tiny-random"], "--output is required"),
        (["train", "--data", "d", "--output", "o"], "--sd and --clip-vision are required"),
        (["train", "--data", "d", "--output", "o", "--preset", "tiny-random", "--resolution", "60"], "--resolution"),
        (
            ["train", "--data", "d", "--output", "o", "--preset", "tiny-random", "--mixed-precision", "fp8"],
            "--mixed-precision",
        ),
    ],
)
def test_bad_options_are_named(argv, needle, capsys):
    assert cli_main(argv) == 2
    assert needle in capsys.readouterr().err


def test_unpaired_data_stops_before_training(tmp_path, capsys):
    from PIL import Image

    for sub in ("gt", "sr_bicubic"):
        (tmp_path / "pairs" / sub).mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(tmp_path / "pairs" / "gt" / "x.png")
    argv = [
        "train",
        "--preset",
        "tiny-random",
        "--data",
        str(tmp_path / "pairs"),
        "--output",
        str(tmp_path / "o"),
        "--resolution",
        "64",
        "--mixed-precision",
        "no",
        "--report-to",
        "none",
    ]
    assert cli_main(argv) == 2
    assert "gt/x.png has no partner" in capsys.readouterr().err


def test_too_small_photos_name_the_flag_that_changes_it(tmp_path, capsys):
    """96 px photos under --preset tiny-random's default 512 px crops: the message says which flag to lower."""
    from PIL import Image

    (tmp_path / "photos").mkdir()
    Image.new("RGB", (96, 96), "white").save(tmp_path / "photos" / "p.png")
    argv = [
        "train",
        "--preset",
        "tiny-random",
        "--data",
        str(tmp_path / "photos"),
        "--output",
        str(tmp_path / "o"),
        "--mixed-precision",
        "no",
        "--report-to",
        "none",
    ]
    assert cli_main(argv) == 2
    assert "p.png: too small (96x96; crops are 512 px: --resolution 96 or less would use it)" in capsys.readouterr().err
    assert cli_main(["make-pairs", str(tmp_path / "photos"), str(tmp_path / "pairs"), "--crop", "128"]) == 0
    assert "too small (96x96; crops are 128 px: --crop 96 or less would use it)" in capsys.readouterr().err


def test_make_pairs_refuses_a_caption_that_is_not_utf8(tmp_path, capsys):
    from PIL import Image

    (tmp_path / "photos").mkdir()
    (tmp_path / "captions").mkdir()
    for name in ("a", "b"):
        Image.new("RGB", (32, 32), "white").save(tmp_path / "photos" / f"{name}.png")
        (tmp_path / "captions" / f"{name}.txt").write_text(f"photo {name}", encoding="utf-8")
    (tmp_path / "captions" / "b.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    argv = [
        "make-pairs",
        str(tmp_path / "photos"),
        str(tmp_path / "pairs"),
        "--crop",
        "16",
        "--captions",
        str(tmp_path / "captions"),
    ]
    assert cli_main(argv) == 1
    assert f"caption file {tmp_path / 'captions' / 'b.txt'} is not UTF-8 text" in capsys.readouterr().err
    assert (tmp_path / "pairs" / "gt_llm_caption" / "a.txt").read_text() == "photo a"
    # nothing of b: a rerun after fixing the caption makes its pair (it skips pairs whose LQ exists)
    assert sorted(p.relative_to(tmp_path / "pairs").as_posix() for p in (tmp_path / "pairs").rglob("*.*")) == [
        "gt/a.png",
        "gt_llm_caption/a.txt",
        "sr_bicubic/a.png",
    ]


def test_make_pairs_missing_folder(tmp_path, capsys):
    assert cli_main(["make-pairs", str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    assert "data folder not found" in capsys.readouterr().err


def test_adamw8bit_without_bitsandbytes_says_what_to_install(monkeypatch):
    import sys

    import torch

    from sspir_core.training.config import TrainConfig
    from sspir_core.training.trainer import make_optimizer

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as when it is not installed
    with pytest.raises(InputError, match="--optimizer adamw8bit needs bitsandbytes"):
        make_optimizer([torch.nn.Parameter(torch.zeros(2))], TrainConfig(optimizer="adamw8bit"))
