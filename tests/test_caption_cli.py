"""`sspir caption`: files and folders in, OUTDIR/<stem>.txt out, resumable, failures reported."""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from sspir_core.cli import COMMANDS  # noqa: E402
from sspir_core.cli import caption as caption_cli  # noqa: E402
from tests.tiny_captioners import ChatServer, build_llava  # noqa: E402


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sspir")
    caption_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["caption", *argv])
    return args.func(args)


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return build_llava(tmp_path_factory.mktemp("cli") / "llava-1.5-7b-hf")


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "lq"
    folder.mkdir()
    rng = np.random.RandomState(0)
    Image.fromarray((rng.rand(20, 24, 3) * 255).astype(np.uint8)).save(folder / "a.png")
    Image.fromarray((rng.rand(20, 24, 4) * 255).astype(np.uint8)).save(folder / "b.png")
    Image.fromarray((rng.rand(16, 16) * 255).astype(np.uint8)).save(folder / "c.jpg")
    (folder / "notes.md").write_text("not an image")
    return folder


def test_caption_is_a_registered_command():
    assert "caption" in COMMANDS


def test_folder_to_txt_resumable(llava_dir, image_folder, tmp_path, capsys):
    out = tmp_path / "gt_llm_caption"
    argv = [
        str(image_folder),
        "-o",
        str(out),
        "--captioner",
        "llava",
        "--model",
        str(llava_dir),
        "--max-new-tokens",
        "6",
        "--no-cache",
        "--device",
        "cpu",
    ]
    assert run_cli(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "b.txt", "c.txt"]
    for p in out.iterdir():
        text = p.read_text(encoding="utf-8")
        assert "\n" not in text and "</s>" not in text
    (out / "a.txt").write_text("KEEP")
    assert run_cli(argv) == 0
    assert (out / "a.txt").read_text() == "KEEP"
    assert "skipped 3" in capsys.readouterr().err
    assert run_cli([*argv, "--overwrite"]) == 0
    assert (out / "a.txt").read_text() != "KEEP"


def test_one_bad_image_is_reported_and_the_rest_continue(llava_dir, image_folder, tmp_path, capsys):
    (image_folder / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    rc = run_cli(
        [
            str(image_folder),
            str(tmp_path / "missing.png"),
            "-o",
            str(out),
            "--model",
            str(llava_dir),
            "--max-new-tokens",
            "4",
            "--no-cache",
        ]
    )
    assert rc == 1
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "b.txt", "c.txt"]
    err = capsys.readouterr().err
    assert "broken.png" in err and "missing.png" in err and "failed 2" in err


def test_typed_text_and_missing_model(image_folder, tmp_path, capsys):
    out = tmp_path / "typed"
    assert run_cli([str(image_folder / "a.png"), "-o", str(out), "--captioner", "text", "--text", "a red\nbarn"]) == 0
    assert (out / "a.txt").read_text() == "a red barn"
    rc = run_cli([str(image_folder), "-o", str(tmp_path / "x"), "--model", str(tmp_path / "no-model")])
    assert rc == 2
    assert "no-model" in capsys.readouterr().err


@pytest.mark.parametrize("text", [None, "", "   "])
def test_text_captioner_without_text_is_an_error(image_folder, tmp_path, capsys, text):
    out = tmp_path / "typed"
    argv = [str(image_folder / "a.png"), "-o", str(out), "--captioner", "text"]
    assert run_cli(argv + ([] if text is None else ["--text", text])) == 2
    assert "--text is missing or empty" in capsys.readouterr().err
    assert not (out / "a.txt").exists()


def test_caption_files_get_normal_permissions(image_folder, tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    out = tmp_path / "typed"
    assert run_cli([str(image_folder / "a.png"), "-o", str(out), "--captioner", "text", "--text", "a barn"]) == 0
    assert (out / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in out.iterdir()] == ["a.txt"]  # no temporary left behind


def test_openai_server_through_the_cli(image_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-cli")
    out = tmp_path / "srv"
    with ChatServer(answer="A barn\nin snow</s>") as srv:
        rc = run_cli(
            [
                str(image_folder / "a.png"),
                "-o",
                str(out),
                "--captioner",
                "openai",
                "--url",
                srv.url,
                "--model-name",
                "llava:7b",
                "--api-key-env",
                "MY_KEY",
                "--prompt",
                "Say it.",
                "--no-cache",
            ]
        )
    assert rc == 0 and (out / "a.txt").read_text() == "A barn in snow"
    body = srv.requests[0]["body"]
    assert body["model"] == "llava:7b" and srv.requests[0]["auth"] == "Bearer sk-cli"
    assert {"type": "text", "text": "Say it."} in body["messages"][0]["content"]
