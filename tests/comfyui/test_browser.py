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

from tests.comfyui.comfy_helpers import NATIVE_PREFIX, WORKFLOWS, every_comfyui, harness

pytestmark = pytest.mark.comfyui

HERE = Path(__file__).resolve().parent
EVERY_VERSION_TEMPLATES = ("sspir_restore.json", "sspir_native.json")


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


def _serve_the_files_it_names(server, workflow: str) -> None:
    """The native templates name the native demo files, which the session's models folder lacks: since ComfyUI
    0.33's front end (1.49) outlines, at load, each loader whose file the server does not list (0.3.75's did not),
    link them in first (ComfyUI rescans a models folder whose time stamp changed)."""
    if not workflow.startswith(NATIVE_PREFIX):
        return
    from sspir_core.demo import native_models

    files = native_models.cached_native_demo_models(harness.cache_root())
    for folder, name in native_models.NATIVE_FILES.values():
        link = Path(server.models_dir) / folder / name
        link.parent.mkdir(exist_ok=True)
        if not link.exists():
            link.symlink_to(files / folder / name)


def _artifacts() -> Path:
    folder = Path(os.environ.get("SSPIR_ARTIFACTS") or tempfile.mkdtemp(prefix="sspir-artifacts-"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@every_comfyui
def test_the_templates_comfyui_lists_are_the_bundled_workflows(server):
    listed = server.get("/workflow_templates")
    assert sorted(listed.get(harness.PACK_NAME, [])) == sorted(p.stem for p in WORKFLOWS.glob("*.json")), listed


def _check(server, tmp_path, workflow: str, env: dict | None = None) -> tuple[dict, Path]:
    """browser_check.js on one workflow: (its report, the screenshot path)."""
    node, chromium, playwright = _browser_tools()
    shot = _artifacts() / f"{Path(workflow).stem}.png"
    proc = subprocess.run(
        [
            node,
            str(HERE / "browser_check.js"),
            server.url,
            str(WORKFLOWS / workflow),
            str(shot),
            chromium,
            str(playwright),
            str(tmp_path / "profile"),
            harness.PACK_NAME,
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, f"browser run failed:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout), shot


@pytest.mark.parametrize("widget, value", [pytest.param("tile", 7, marks=every_comfyui), ("cfg", 0.5)])
def test_a_bad_widget_is_outlined_alone(server, tmp_path, widget, value):
    """Issue 27: tile 7 on PGA Sampler outlined steps, cfg, tile, tile_overlap and vae_tile. Run with one bad
    widget: the front end marks that input of that node, and nothing else."""
    wf = json.loads((WORKFLOWS / "sspir_restore.json").read_text())
    (sampler,) = [n["id"] for n in wf["nodes"] if n["type"] == "SSPIRSampler"]
    report, _ = _check(server, tmp_path, "sspir_restore.json", {"SSPIR_BAD_WIDGET": f"SSPIRSampler:{widget}:{value}"})
    assert report["widgetErrors"] == {str(sampler): [widget]}, report["widgetErrors"]


# on every ComfyUI: the reference and the native route's graphs (the others repeat their nodes)
@pytest.mark.parametrize(
    "workflow",
    [
        pytest.param(w, marks=every_comfyui) if w in EVERY_VERSION_TEMPLATES else w
        for w in sorted(p.name for p in WORKFLOWS.glob("*.json"))
    ],
)
def test_template_loads_wired_from_the_templates_dialog(server, tmp_path, workflow):
    """Templates -> SSP-IR's category -> click: the graph loads whole and wired, its thumbnail is served, no node
    covers a group's title, and the front end reports no error once the page was ready (the errors it logs
    while starting, before any workflow, are its own: printed, not failed)."""
    _serve_the_files_it_names(server, workflow)
    report, shot = _check(server, tmp_path, workflow)
    print(f"\nscreenshot of {workflow}: {shot}\nfront-end errors before the workflow: {report['startupErrors']}")
    assert report["missingTypes"] == [], f"node types unknown to the front end: {report['missingTypes']}"
    assert report["nodeCount"] == report["expectedNodes"], "clicking the template did not load the workflow"
    assert report["linkCount"] == report["expectedLinks"] > 0
    assert report["brokenNodes"] == [], report["brokenNodes"]
    assert report["invalidLinks"] == [], report["invalidLinks"]
    assert report["titleOverlaps"] == [], report["titleOverlaps"]
    # Issue 27: at 1600x1000 the graphs opened partly under the side bar: the saved view (extra.ds) shows all
    print(f"view: {report['view']}\ncard: {report['cardText']!r}")
    assert report["view"]["outOfView"] == [], report["view"]
    assert "missing" not in report["dialogText"].lower(), report["dialogText"]
    base = f"{server.url}/api/workflow_templates/{harness.PACK_NAME}/{Path(workflow).stem}"
    assert report["templateFiles"].get(base + ".json", [None])[0] == 200, report["templateFiles"]
    assert report["templateFiles"].get(base + ".jpg") == [200, "image/jpeg"], report["templateFiles"]
    assert report["errorsAfterReady"] == [], report["errorsAfterReady"]
    ours = [r for r in report["failedResponses"] if harness.PACK_NAME in r or "SSPIR" in r]
    assert not ours, ours
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
