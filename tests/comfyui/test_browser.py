"""The bundled UI workflow in ComfyUI's own front end, in a real headless Chromium.

Needs Debian's `chromium` and playwright-core from npm (`python scripts/comfyui.py browser`); without
them the test skips and says which is missing, unless ``SSPIR_REQUIRE_BROWSER=1`` (set by .ci/run).
The screenshot is kept in ``SSPIR_ARTIFACTS`` (default: a temp folder) and its path printed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.comfyui.comfy_helpers import WORKFLOWS, harness

pytestmark = pytest.mark.comfyui

HERE = Path(__file__).resolve().parent


def _browser_tools() -> tuple[str, str, Path]:
    node = shutil.which("node")
    chromium = harness.chromium_binary()
    playwright = harness.playwright_core_dir()
    why = []
    if node is None:
        why.append("Node.js (`node`) not found")
    if chromium is None:
        why.append(f"no Chromium binary in {harness.CHROMIUM_CANDIDATES} (apt install chromium, or set SSPIR_CHROMIUM)")
    if not (playwright / "package.json").is_file():
        why.append(f"playwright-core not in {playwright} (run: python scripts/comfyui.py browser)")
    if why:
        if os.environ.get("SSPIR_REQUIRE_BROWSER", "") not in ("", "0"):
            pytest.fail("browser test required but: " + "; ".join(why))
        pytest.skip("browser test skipped: " + "; ".join(why))
    return node, chromium, playwright


def _artifacts() -> Path:
    folder = Path(os.environ.get("SSPIR_ARTIFACTS") or tempfile.mkdtemp(prefix="sspir-artifacts-"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.mark.parametrize("workflow", sorted(p.name for p in WORKFLOWS.glob("*.json")))
def test_ui_workflow_loads_wired_in_the_front_end(server, tmp_path, workflow):
    node, chromium, playwright = _browser_tools()
    shot = _artifacts() / f"{Path(workflow).stem}.png"
    proc = subprocess.run(
        [node, str(HERE / "browser_check.js"), server.url, str(WORKFLOWS / workflow), str(shot), chromium,
         str(playwright), str(tmp_path / "profile")],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, f"browser run failed:\n{proc.stderr[-3000:]}"
    report = json.loads(proc.stdout)
    print(f"\nscreenshot of {workflow}: {shot}")
    assert report["missingTypes"] == [], f"node types unknown to the front end: {report['missingTypes']}"
    assert report["brokenNodes"] == [], report["brokenNodes"]
    assert report["invalidLinks"] == [], report["invalidLinks"]
    assert "missing" not in report["dialogText"].lower(), report["dialogText"]
    assert report["nodeCount"] == report["expectedNodes"]
    assert report["linkCount"] == report["expectedLinks"] > 0
    assert shot.is_file() and shot.stat().st_size > 10_000
    # What the front end would queue from this file is its API twin (same nodes, links and widget values):
    # catches widget values shifted by widgets the front end adds (e.g. "control after generate").
    twin = WORKFLOWS / "api" / workflow
    if twin.is_file():
        queued = report["apiPrompt"]
        expected = json.loads(twin.read_text())
        assert set(queued) == set(expected), f"node ids differ: {sorted(queued)} vs {sorted(expected)}"
        for nid, node in expected.items():
            assert queued[nid]["class_type"] == node["class_type"]
            got = {k: v for k, v in queued[nid]["inputs"].items() if k in node["inputs"]}
            assert got == node["inputs"], f"{workflow} node {nid} ({node['class_type']}): front end queues {got}"
            info = server.object_info(node["class_type"])[node["class_type"]]["input"]
            declared = {**info.get("required", {}), **info.get("optional", {})}
            # Display-only widgets (PreviewAny's "preview") are queued too; the server ignores them.
            extra = (set(queued[nid]["inputs"]) - set(node["inputs"])) & set(declared)
            assert not extra, f"{workflow} node {nid}: inputs missing from the API twin: {extra}"
