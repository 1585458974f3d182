"""Shared test set-up: offline hub, fixture locations."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
# CI lays shared/ beside the clone; SSPIR_SHARED overrides.
SHARED = Path(os.environ.get("SSPIR_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def fixture_a() -> Path:
    path = SHARED / "fixtures" / "official-tiny-a"
    assert (path / "checkpoint-7").is_dir(), f"official parity fixture not found at {path} (set SSPIR_SHARED)"
    return path


@pytest.fixture(scope="session")
def manifests() -> Path:
    path = SHARED / "fixtures" / "manifests"
    assert path.is_dir(), f"manifests not found at {path} (set SSPIR_SHARED)"
    return path
