"""Shared test set-up: offline hub, fixture locations."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
# The official parity fixture and the full-size manifests live in the repository (tests/fixtures/README.md
# keeps their provenance), so the suite runs on any clone; SSPIR_FIXTURES points at another copy.
FIXTURES = Path(os.environ.get("SSPIR_FIXTURES", REPO / "tests" / "fixtures"))


SLOW_FOLDERS = (REPO / "tests" / "comfyui",)  # real ComfyUI servers and the browser: every test there is slow


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test in :data:`SLOW_FOLDERS` ``slow``, so ``-m "not slow"`` (the inner loop) leaves them out
    without a mark in each file; single heavy tests elsewhere carry ``@pytest.mark.slow`` themselves."""
    for item in items:
        if any(item.path.is_relative_to(folder) for folder in SLOW_FOLDERS):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def fixture_a() -> Path:
    path = FIXTURES / "official-tiny-a"
    assert (path / "checkpoint-7").is_dir(), f"official parity fixture not found at {path} (set SSPIR_FIXTURES)"
    return path


@pytest.fixture(scope="session")
def manifests() -> Path:
    path = FIXTURES / "manifests"
    assert path.is_dir(), f"manifests not found at {path} (set SSPIR_FIXTURES)"
    return path


@pytest.fixture
def one_thread():
    """One intra-op thread: on cores shared with other jobs, two OpenMP threads made a training step ~20x slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def import_bitsandbytes():
    """bitsandbytes, for the few tests of the paths that use it, or a skip that says why.

    The pack never installs it (pyproject.toml's eval extra says why); `.ci/run` runs these tests again with it on
    PYTHONPATH and ``SSPIR_REQUIRE_BITSANDBYTES=1``, which turns the skip into a failure.
    """
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        if os.environ.get("SSPIR_REQUIRE_BITSANDBYTES", "") not in ("", "0"):
            pytest.fail("SSPIR_REQUIRE_BITSANDBYTES is set but bitsandbytes is not importable")
        pytest.skip("bitsandbytes is not installed (optional; .ci/run runs this test with it)")
    import bitsandbytes

    return bitsandbytes


def wake_zero_convs(controlnet, seed: int = 1) -> None:
    """Give the ControlNet's zero-initialised output convs small random weights so its path changes the output."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in controlnet.named_parameters():
            if "controlnet_" in name or "conv_out" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
