"""Helpers shared by the end-to-end tests: workflows, input images, unique prompts."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sspir_core import host as harness  # noqa: F401 (fetch, server control; re-exported to the tests)

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "example_workflows"
EVERY_COMFYUI = "every_comfyui"
every_comfyui = getattr(pytest.mark, EVERY_COMFYUI)
"""Mark a test, a module (``pytestmark``) or one ``pytest.param`` to run on every tested ComfyUI version, not only
on the default one (tests/comfyui/conftest.py)."""


def unique(tag: str = "") -> str:
    return f"{tag}{uuid.uuid4().hex[:10]}"


def load_api(name: str) -> dict:
    return json.loads((WORKFLOWS / "api" / name).read_text())


NATIVE_PREFIX = "sspir_native"  # the native route's workflows run on their own models (tests/comfyui/test_native.py)


def api_workflows(native: bool = False) -> list[str]:
    """The API workflows of the reference path (and, with ``native``, the native route's too)."""
    return sorted(p.name for p in (WORKFLOWS / "api").glob("*.json") if native or not p.name.startswith(NATIVE_PREFIX))


def nodes_of(prompt: dict, class_type: str) -> list[str]:
    return [nid for nid, node in prompt.items() if node["class_type"] == class_type]


def put_image(server, array: np.ndarray, mode: str | None = None, tag: str = "img") -> str:
    """Write an image into the server's input folder under a unique name; returns the name."""
    name = unique(tag) + ".png"
    Image.fromarray(array, mode=mode).save(server.input_dir / name)
    return name


def read_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255.0


def with_unique_outputs(prompt: dict) -> dict:
    """A copy whose SaveImage/PreviewImage prefixes are unique, so the server never answers from cache."""
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        if node["class_type"] == "SaveImage":
            node["inputs"]["filename_prefix"] = unique("sspir_test_")
    return prompt


def link_native_models(models: Path, native_files: Path) -> Path:
    """A models folder whose native demo files are links into the shared cache (each server adds its own extras)."""
    from sspir_core.demo import native_models

    for folder, name in native_models.NATIVE_FILES.values():
        (models / folder).mkdir(exist_ok=True)
        (models / folder / name).symlink_to(native_files / folder / name)
    return models
