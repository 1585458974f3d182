"""README's first command as a newcomer runs it: scripts/run_workflow.py on the bundled workflow, its terminal
output (live progress, the output path) and ComfyUI's log (nothing of ours that looks like a problem)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.comfyui.comfy_helpers import REPO, WORKFLOWS

pytestmark = pytest.mark.comfyui

ALARM = re.compile(r"warn|error|fail|traceback|exception|deprecat|broken|missing|cannot", re.IGNORECASE)
# What ComfyUI 0.3.75 itself prints on every start without torchaudio (not needed by this pack): its own lines,
# whatever the custom nodes are (seen in a run with no custom node).
COMFYUI_OWN = [
    re.compile(p)
    for p in (
        r"^Traceback \(most recent call last\):$",
        r"^ModuleNotFoundError: No module named 'torchaudio'$",
        r"^Cannot import .*comfy_extras/nodes_audio(_encoder)?\.py module for custom nodes: No module named 'torchaudio'$",  # noqa: E501 (one key, one pattern)
        r"^IMPORT FAILED: nodes_audio(_encoder)?\.py$",
        r"^WARNING: some comfy_extras/ nodes did not import correctly\. This may be because they are missing some "
        r"dependencies\.$",
        r"^This issue might be caused by new missing dependencies added the last time you updated ComfyUI\.$",
        r"^torchaudio missing, (ACE model|MMAudio VAE model) will be broken$",
    )
]


@pytest.fixture(scope="module")
def first_run(comfy_dir, demo_models, tmp_path_factory):
    work = tmp_path_factory.mktemp("first-run")
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "run_workflow.py"),
            str(WORKFLOWS / "api" / "sspir_restore.json"),
            "--models",
            str(demo_models),
            "--work-dir",
            str(work),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=900,
    )
    return proc, work


def test_the_terminal_shows_live_progress_and_ends_with_the_output_path(first_run):
    """Issue 27: 4 minutes with nothing on the terminal. Not a TTY here, so plain lines: each node as it starts,
    PGA Sampler's progress in increasing order to its total (52 units: encode, 50 steps, decode) with the time
    left, and the restored image's path last."""
    proc, work = first_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert (
        last == f"restored image: {work / 'output' / 'sspir_00001_.png'}"
        and (work / "output" / "sspir_00001_.png").is_file()
    )
    lines = proc.stderr.splitlines()
    sampler = [line for line in lines if "] PGA Sampler (SSP-IR): " in line]
    values = [int(re.search(r": (\d+)/(\d+)", line).group(1)) for line in sampler]
    assert values == sorted(values) and len(values) >= 5 and sampler[-1].endswith(": 52/52"), sampler
    assert any("left" in line for line in sampler), sampler
    started = [line for line in lines if re.fullmatch(r"\[\d+/11\] [^:]+", line)]
    assert started[-1] == "[11/11] Save Image", started
    assert "\r" not in proc.stderr


def test_nothing_to_learn_to_ignore(first_run):
    """The run's own output has no warning-like line, and every such line in ComfyUI's log is one ComfyUI prints
    on any start (torchaudio); the pack's lines there are its plan and progress."""
    proc, work = first_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours = [line for line in proc.stderr.splitlines() + proc.stdout.splitlines() if ALARM.search(line)]
    assert not ours, ours
    log = (work / "comfyui.log").read_text(errors="replace").splitlines()
    alarming = [line for line in log if ALARM.search(line) and not any(p.search(line) for p in COMFYUI_OWN)]
    assert not alarming, alarming
    sspir = [line for line in log if line.startswith("SSP-IR")]
    assert sspir and all(not ALARM.search(line) for line in sspir), sspir
