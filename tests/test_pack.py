"""The pack's entry point and CLI: import cleanly anywhere, whatever the folder is called."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import fake_comfy
from tests.conftest import REPO, import_bitsandbytes


def _import_pack(folder: Path, name: str):
    spec = importlib.util.spec_from_file_location(
        name, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_plain_import_is_cheap_and_offline():
    """Outside ComfyUI: no torch, no network, no model loading at import time."""
    code = (
        "import importlib.util, sys, socket\n"
        "socket.socket.connect = lambda *a, **k: (_ for _ in ()).throw(RuntimeError('network at import'))\n"
        f"spec = importlib.util.spec_from_file_location('pack', r'{REPO / '__init__.py'}', "
        f"submodule_search_locations=[r'{REPO}'])\n"
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
        "from tests.test_nodes import CONTRACT\n"
        "assert sorted(s.node_id for s in schemas) == sorted(CONTRACT) and not heavy, heavy\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def _copy_tracked(dest: Path, exclude: tuple[str, ...] = ()) -> Path:
    """The git-tracked files of the pack (what a user's clone holds) copied to ``dest``; nothing a local run left
    beside them (venvs, caches, outputs) comes along."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in tracked.decode().split("\0"):
        if name and (REPO / name).is_file() and not name.startswith(exclude):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def test_entrypoint_under_any_folder_name(tmp_path, monkeypatch):
    """Loaded as custom_nodes.<anything>: comfy_entrypoint returns an extension listing the nodes."""
    folder = _copy_tracked(tmp_path / "Some Other-Name", exclude=("tests/",))

    fake_comfy.install(monkeypatch, str(tmp_path / "models"))
    pack = _import_pack(folder, "custom_nodes_sspir_test")
    ext = asyncio.run(pack.comfy_entrypoint())
    assert isinstance(ext, sys.modules["comfy_api.v0_0_2"].ComfyExtension)
    node_ids = [cls.define_schema().node_id for cls in asyncio.run(ext.get_node_list())]
    from tests.test_nodes import CONTRACT

    assert sorted(node_ids) == sorted(CONTRACT) and all(n.startswith("SSPIR") for n in node_ids)


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
    lines = [
        ln.strip()
        for ln in (REPO / "requirements.txt").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines == [
        d for d in deps if not d.replace(" ", "").startswith(("torch>", "torch=", "torch<", "torchvision"))
    ]
    assert not any(ln.startswith("torch") and not ln.startswith("torch_") for ln in lines)


def test_cli_help_imports_no_torch():
    """Every sub-command keeps heavy imports inside its run function: `sspir --help` stays instant."""
    code = "import sys; from sspir_core.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_models_load_without_importing_bitsandbytes(tmp_path):
    """A user's environment may hold bitsandbytes (another pack's); diffusers imports it with every model, and peft
    (reached from diffusers' UNet when installed) too: 3 s and a "Failed to load CPU gemm_4bit_forward from
    kernels-community" error line in each normal run. In a process set up as the `sspir` executable sets
    itself up, it stays unimported while the demo models load, and diffusers and peft still reach the real
    module when they touch it."""
    import_bitsandbytes()
    from sspir_core.demo import model_files as demo_models

    # written here: making the one-step demo file runs peft's LoRA injection, which tries its bitsandbytes
    # layers (training-side work; loading a one-step file merges the LoRA without peft)
    paths = demo_models.write_demo_models(tmp_path, captioner=False)
    code = (
        "import importlib.util, sys\n"
        "from sspir_core.cli.quiet_imports import install\n"
        "install()  # what sspir's console_main does first\n"
        "from sspir_core.restore.components import load_pipeline_parts\n"
        f"load_pipeline_parts(r'{paths['sd']}', r'{paths['sspir']}')\n"
        f"load_pipeline_parts(r'{paths['sd']}', r'{paths['sspir_one_step']}')\n"
        "assert 'diffusers.models.modeling_utils' in sys.modules\n"
        "assert 'bitsandbytes' not in sys.modules, 'imported'\n"
        "print('now importing bitsandbytes', file=sys.stderr, flush=True)\n"
        "import diffusers.quantizers.bitsandbytes.utils as u\n"
        "import bitsandbytes.nn\n"
        "assert u.bnb.nn is bitsandbytes.nn\n"
        "if importlib.util.find_spec('peft') is not None:\n"
        "    import peft.helpers\n"
        "    assert peft.helpers.bnb.nn is bitsandbytes.nn\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
    loading = out.stderr.split("now importing bitsandbytes")[0]
    assert "kernels" not in loading
    # nor diffusers' "modules ... that should be kept in float32: []" (from_single_file casts twice)
    assert "kept in float32" not in loading, loading


def test_the_library_leaves_a_hosts_imports_alone():
    """ComfyUI imports sspir_core into its own process: the import hook is the `sspir` executable's alone."""
    code = (
        "import sys\nbefore = list(sys.meta_path)\nimport sspir_core, sspir_core.restore.components\n"
        "import nodes\nnodes.node_list\nassert sys.meta_path == before, sys.meta_path\nprint('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def test_project_metadata_uses_the_spdx_license_string_without_deprecation_warnings():
    """setuptools >= 77 deprecates the `project.license` table (a warning in every install): the SPDX string
    form needs 77 as the build floor."""
    import warnings

    import tomllib
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert data["project"]["license"] == "GPL-3.0-or-later"
    assert "setuptools>=77" in [r.replace(" ", "") for r in data["build-system"]["requires"]]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), str(REPO / "pyproject.toml"))
    assert not [str(w.message) for w in caught if "license" in str(w.message).lower()]
    assert dist.metadata.license_expression == "GPL-3.0-or-later"
    # the licence's text ships beside it (the Comfy Registry and wheels carry LICENSE)
    assert [Path(f).name for f in dist.metadata.license_files] == ["LICENSE"]
    head = (REPO / "LICENSE").read_text().split("\n", 3)[:2]
    assert [line.strip() for line in head] == ["GNU GENERAL PUBLIC LICENSE", "Version 3, 29 June 2007"]


def test_comfy_node_pack_leaves_out_the_tests_and_keeps_the_pack(tmp_path):
    """`comfy node pack` (comfy-cli 1.23.0, run by .ci/run) zips the git-tracked files minus .comfyignore: the
    11.6 MB of test fixtures stay out, everything ComfyUI loads stays in."""
    import zipfile

    from sspir_core.host import cache_root

    comfy = cache_root() / "comfy-cli-venv" / "bin" / "comfy"
    if not comfy.is_file():
        if os.environ.get("SSPIR_REQUIRE_COMFYUI", "") not in ("", "0"):
            pytest.fail(f"comfy-cli not found at {comfy}")
        pytest.skip(f"comfy-cli not installed at {comfy} (.ci/run installs it)")
    copy = _copy_tracked(tmp_path / "pack")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=copy, check=True)
    subprocess.run([*git, "add", "-A"], cwd=copy, check=True)
    out = subprocess.run(
        [str(comfy), "--skip-prompt", "--no-enable-telemetry", "node", "pack"],
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    with zipfile.ZipFile(copy / "node.zip") as z:
        names = z.namelist()
        size = sum(i.file_size for i in z.infolist())
    assert not [n for n in names if n.startswith(("tests/", ".ci/"))]
    for needed in (
        "__init__.py",
        "pyproject.toml",
        "requirements.txt",
        "nodes/sampling.py",
        "example_workflows/sspir_restore.json",
        "example_workflows/sspir_restore.jpg",
        "sspir_core/restore/pipeline.py",
        "sspir_core/configs/sd15/unet.json",
    ):
        assert needed in names, needed
    assert size < 3_000_000, f"{size / 1e6:.1f} MB unpacked"
