"""The pack's entry point and CLI: import cleanly anywhere, whatever the folder is called."""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import fake_comfy
from tests.conftest import REPO


def _import_pack(folder: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py", submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_plain_import_is_cheap_and_offline():
    """Outside ComfyUI: no torch, no network, no model loading at import time."""
    code = (
        "import importlib.util, sys, socket\n"
        "socket.socket.connect = lambda *a, **k: (_ for _ in ()).throw(RuntimeError('network at import'))\n"
        f"spec = importlib.util.spec_from_file_location('pack', r'{REPO / '__init__.py'}', submodule_search_locations=[r'{REPO}'])\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, sorted(sys.modules)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_listing_the_nodes_imports_no_model_library(tmp_path):
    """ComfyUI lists the nodes at start: diffusers, transformers and open_clip load on the first run only
    (importing diffusers alone took 2-8 s of every ComfyUI start)."""
    code = (
        "import asyncio, importlib.util, sys\n"
        f"sys.path.insert(0, r'{REPO}')\n"
        "from _pytest.monkeypatch import MonkeyPatch\n"
        "from tests import fake_comfy\n"
        f"fake_comfy.install(MonkeyPatch(), r'{tmp_path}')\n"
        f"spec = importlib.util.spec_from_file_location('pack', r'{REPO / '__init__.py'}', "
        f"submodule_search_locations=[r'{REPO}'])\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['pack'] = m; spec.loader.exec_module(m)\n"
        "nodes = asyncio.run(asyncio.run(m.comfy_entrypoint()).get_node_list())\n"
        "schemas = [n.define_schema() for n in nodes]\n"
        "heavy = [n for n in ('diffusers', 'transformers', 'open_clip') if n in sys.modules]\n"
        "assert len(schemas) == 8 and not heavy, heavy\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def test_entrypoint_under_any_folder_name(tmp_path, monkeypatch):
    """Loaded as custom_nodes.<anything>: comfy_entrypoint returns an extension listing the nodes."""
    folder = tmp_path / "Some Other-Name"
    shutil.copytree(REPO, folder, ignore=shutil.ignore_patterns(".venv", ".git", "tests", "__pycache__"))

    fake_comfy.install(monkeypatch, str(tmp_path / "models"))
    pack = _import_pack(folder, "custom_nodes_sspir_test")
    ext = asyncio.run(pack.comfy_entrypoint())
    assert isinstance(ext, sys.modules["comfy_api.v0_0_2"].ComfyExtension)
    node_ids = [cls.define_schema().node_id for cls in asyncio.run(ext.get_node_list())]
    assert len(node_ids) == 8 and all(n.startswith("SSPIR") for n in node_ids)


def test_cli_convert_round_trip(fixture_a, tmp_path):
    from sspir_core.cli import main

    compact = tmp_path / "w.safetensors"
    assert main(["convert", "to-compact", str(fixture_a / "checkpoint-7"), str(compact)]) == 0
    out = tmp_path / "official"
    assert main(["convert", "to-official", str(compact), str(out), "--sd", str(fixture_a / "checkpoint-7")]) == 0
    assert (out / "unet/config.json").is_file() and (out / "refine/refine.pt").is_file()
    assert main(["convert", "to-official", str(compact), str(out)]) == 2  # --sd missing


def test_cli_reports_bad_checkpoint_without_traceback(tmp_path, capsys):
    from sspir_core.cli import main

    assert main(["convert", "to-compact", str(tmp_path / "missing"), str(tmp_path / "x.safetensors")]) == 1
    captured = capsys.readouterr()
    assert "checkpoint folder not found" in captured.err and captured.out == ""  # errors go to stderr
    assert main(["convert", "to-official", str(tmp_path / "x.safetensors"), str(tmp_path / "o")]) == 2
    assert "needs --sd" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--help"], ["convert", "--help"]])
def test_cli_help(argv):
    out = subprocess.run([sys.executable, "-m", "sspir_core.cli", *argv], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and "usage: sspir" in out.stdout


def test_requirements_txt_is_pyproject_without_torch():
    """ComfyUI installers read requirements.txt: same pins as pyproject, but never a torch that replaces ComfyUI's."""
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    lines = [ln.strip() for ln in (REPO / "requirements.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines == [d for d in deps if not d.replace(" ", "").startswith(("torch>", "torch=", "torch<", "torchvision"))]
    assert not any(ln.startswith("torch") and not ln.startswith("torch_") for ln in lines)


def test_cli_help_imports_no_torch():
    """Every sub-command keeps heavy imports inside its run function: `sspir --help` stays instant."""
    code = "import sys; from sspir_core.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
