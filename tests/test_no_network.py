"""Nothing phones home: no lookup or connection outside loopback at import or load, from the library or the CLI.

Each entry point runs in a child process with ``tests/netguard/`` first on PYTHONPATH (its sitecustomize refuses
and records every non-loopback lookup or connection, with the stack that asked) and with ``HF_HUB_OFFLINE`` and
``TRANSFORMERS_OFFLINE`` unset, as a ComfyUI user has them. The ComfyUI entry point (the nodes in a real server)
is ``tests/comfyui/test_no_network.py``.

The root cause this guards: an installed bitsandbytes is imported by every diffusers model, and bitsandbytes
0.50 asks the Hugging Face Hub for a CPU kernel at import on AVX-512 BF16 CPUs. pyiqa requires it without
using it, so the pack installs pyiqa without it (pyproject.toml's eval extra, scripts/setup.sh). The control
puts a stand-in bitsandbytes that looks the Hub up at import, as the real one does, on the path: the same
library entry point is then caught, so these tests can fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GUARD = REPO / "tests" / "netguard"
SAMPLE = REPO / "examples" / "astronaut_lq.png"


def guarded_env(log: Path, *front: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["PYTHONPATH"] = os.pathsep.join(
        [*(str(p) for p in front), str(GUARD), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    env["SSPIR_NETGUARD_LOG"] = str(log)
    env["OMP_NUM_THREADS"] = "1"
    return env


def attempts(log: Path) -> list[dict]:
    if not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]


def describe(found: list[dict]) -> str:
    return "\n\n".join(f"{a['what']} {a['host']} from:\n{a['stack'][-2500:]}" for a in found[:3])


def run_guarded(args: list[str], log: Path, *front: Path, cwd: Path = REPO) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=guarded_env(log, *front), timeout=900
    )
    assert proc.returncode == 0, f"{args} failed:\n{proc.stderr[-4000:]}"
    return proc


def test_the_guard_itself_refuses_and_records(tmp_path):
    """The guard is what the other tests lean on: a lookup of a public name is refused and logged, loopback passes."""
    log = tmp_path / "net.jsonl"
    code = (
        "import socket\n"
        "socket.getaddrinfo('127.0.0.1', 80)\n"
        "socket.getaddrinfo('localhost', 80)\n"
        "try:\n    socket.getaddrinfo('huggingface.co', 443)\nexcept OSError as e:\n    print('refused', e)\n"
    )
    out = run_guarded(["-c", code], log)
    assert "refused" in out.stdout
    assert [a["host"] for a in attempts(log)] == ["huggingface.co"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, Path]:
    """The demo models, written by the CLI under the guard (so `sspir demo-models` is an entry point checked too)."""
    root = tmp_path_factory.mktemp("net-demo")
    log = root / "net.jsonl"
    run_guarded(["-m", "sspir_core.cli", "demo-models", str(root / "models")], log)
    return root / "models", log


LIBRARY = """
import sys
import sspir_core, sspir_core.weights.checkpoint, sspir_core.restore.components
from sspir_core.restore.components import load_pipeline_parts
from sspir_core.demo.model_files import DEMO_FILES
from pathlib import Path
root = Path(sys.argv[1])
path = lambda kind: root.joinpath(*DEMO_FILES[kind])
load_pipeline_parts(path('sd'), path('sspir'))
load_pipeline_parts(path('sd'), path('sspir_one_step'))
import sspir_core.captioners.registry, sspir_core.evaluation.registry, sspir_core.training.trainer
import pyiqa, pyiqa.archs.lpips_arch, pyiqa.archs.niqe_arch
print('loaded')
"""


@pytest.mark.slow  # the demo-models CLI in a subprocess under the network guard
def test_demo_models_cli_makes_no_connection(demo):
    _, log = demo
    found = attempts(log)
    assert not found, f"`sspir demo-models` reached the network:\n{describe(found)}"


@pytest.mark.slow  # a subprocess under the network guard
def test_library_import_and_load_make_no_connection(demo, tmp_path):
    models, _ = demo
    log = tmp_path / "net.jsonl"
    out = run_guarded(["-c", LIBRARY, str(models)], log)
    assert "loaded" in out.stdout
    found = attempts(log)
    assert not found, (
        f"the library reached the network:\n{describe(found)}\n"
        "(is bitsandbytes installed? the pack installs pyiqa without it: see pyproject.toml)"
    )


@pytest.mark.slow  # CLI subprocesses under the network guard
def test_restore_and_eval_cli_make_no_connection(demo, tmp_path):
    models, _ = demo
    from sspir_core.demo.model_files import DEMO_FILES

    log = tmp_path / "net.jsonl"
    out_dir = tmp_path / "restored"
    run_guarded(
        [
            "-m",
            "sspir_core.cli",
            "restore",
            str(SAMPLE),
            "-o",
            str(out_dir),
            "--sd",
            str(models.joinpath(*DEMO_FILES["sd"])),
            "--sspir",
            str(models.joinpath(*DEMO_FILES["sspir"])),
            "--clip-vision",
            str(models.joinpath(*DEMO_FILES["clip_vision"])),
            "--steps",
            "2",
            "--size",
            "32x32",
        ],
        log,
    )
    assert (out_dir / "astronaut_lq.png").is_file()
    gt = tmp_path / "gt"
    gt.mkdir()
    (gt / "astronaut_lq.png").write_bytes((out_dir / "astronaut_lq.png").read_bytes())
    run_guarded(
        [
            "-m",
            "sspir_core.cli",
            "eval",
            "--gt",
            str(gt),
            "--pred",
            str(out_dir),
            "--metrics",
            "all",
            "--weights-dir",
            str(tmp_path / "no-weights"),
            "--device",
            "cpu",
        ],
        log,
    )
    found = attempts(log)
    assert not found, f"the CLI reached the network:\n{describe(found)}"


def fake_bitsandbytes(folder: Path) -> Path:
    """An installed-looking bitsandbytes whose import asks the Hub for a kernel, as bitsandbytes 0.50 does."""
    pkg = folder / "bitsandbytes"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "import socket\n"
        "try:\n"
        "    socket.getaddrinfo('huggingface.co', 443)  # kernels.get_kernel('kernels-community/...')\n"
        "except OSError:\n"
        "    pass\n"
        "from . import nn\n"
    )
    (pkg / "nn.py").write_text("class Linear4bit: pass\nclass Linear8bitLt: pass\nclass Params4bit: pass\n")
    dist = folder / "bitsandbytes-0.50.2.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bitsandbytes\nVersion: 0.50.2\n")
    (dist / "top_level.txt").write_text("bitsandbytes\n")
    (dist / "RECORD").write_text("bitsandbytes/__init__.py,,\nbitsandbytes/nn.py,,\n")
    return folder


@pytest.mark.slow  # a subprocess under the network guard
def test_control_an_installed_bitsandbytes_is_caught(tmp_path):
    """The failure these tests exist for: with a bitsandbytes on the path, importing the library looks the Hub up."""
    log = tmp_path / "net.jsonl"
    front = fake_bitsandbytes(tmp_path / "site")
    run_guarded(["-c", "import sspir_core.weights.checkpoint"], log, front)
    found = attempts(log)
    assert [a["host"] for a in found] == ["huggingface.co"], found
    assert "diffusers" in found[0]["stack"]


def test_without_pyiqa_the_eval_message_says_to_install_it_without_bitsandbytes(monkeypatch):
    """pyiqa is installed apart (--no-deps) so bitsandbytes never comes with it: the skip reason says how."""
    import importlib.util

    from sspir_core.evaluation.metrics import METRICS
    from sspir_core.evaluation.registry import missing_requirements
    from sspir_core.evaluation.weights import WeightsConfig

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyiqa" else real(name, *a))
    missing = missing_requirements(METRICS["lpips"], WeightsConfig(folder=Path("/nonexistent")))
    assert any("pip install --no-deps 'pyiqa" in m for m in missing), missing
