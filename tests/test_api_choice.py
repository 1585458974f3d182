"""nodes/api.py: which V3 API module and progress mechanism the pack takes on each host shape (fakes in
tests/fake_comfy.py; the real 0.3.75 and 0.33.0 servers run the nodes through it in tests/comfyui/)."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch

from tests import fake_comfy


def _api(monkeypatch, tmp_path, shape):
    rec = fake_comfy.install(monkeypatch, str(tmp_path), api_shape=shape)
    return importlib.import_module("nodes.api"), rec


@pytest.mark.parametrize(
    "shape, module", [("v0_0_2", "comfy_api.v0_0_2"), ("0.33.0", "comfy_api.latest"), ("stable", "comfy_api.v1")]
)
def test_the_stable_or_newest_module_is_chosen(monkeypatch, tmp_path, shape, module):
    api, _ = _api(monkeypatch, tmp_path, shape)
    assert api.API is sys.modules[module]
    assert api.io is sys.modules[module].io


def test_a_module_without_what_the_nodes_use_is_skipped(monkeypatch, tmp_path):
    fake_comfy.install(monkeypatch, str(tmp_path), api_shape="stable")
    lacking = type(sys.modules["comfy_api.v1"])("comfy_api.v1")
    lacking.io, lacking.ui, lacking.ComfyExtension = object(), object(), object
    monkeypatch.setitem(sys.modules, "comfy_api.v1", lacking)
    api = importlib.import_module("nodes.api")
    assert api.API is sys.modules["comfy_api.v0_9"]  # the next stable one


def test_no_usable_module_is_an_import_error_naming_what_was_tried(monkeypatch, tmp_path):
    fake_comfy.install(monkeypatch, str(tmp_path))
    monkeypatch.delitem(sys.modules, "comfy_api.v0_0_2")
    with pytest.raises(ImportError, match="tried comfy_api.latest .*comfy_api.v0_0_2"):
        importlib.import_module("nodes.api")


@pytest.mark.parametrize("shape, via", [("v0_0_2", "ProgressBar"), ("0.33.0", "set_progress")])
def test_progress_goes_through_the_newest_mechanism(monkeypatch, tmp_path, shape, via):
    _, rec = _api(monkeypatch, tmp_path, shape)
    host = importlib.import_module("nodes.host")
    _, callback = host.start_run()
    callback(0, 1, torch.zeros(1, 4, 8, 8))
    assert rec.progress, "no progress reported"
    entry = rec.progress[-1]
    if via == "set_progress":
        assert (
            entry[0] == "set_progress" and entry[3] is not None and entry[3].size == (8, 8)
        )  # the latent preview, latent-sized
    else:
        assert entry[0] != "set_progress" and entry[2][0] == "JPEG"


def test_set_progress_outside_an_executing_node_falls_back_to_the_progress_bar(monkeypatch, tmp_path):
    api, rec = _api(monkeypatch, tmp_path, "0.33.0")

    def no_context(**_):
        raise ValueError("node_id must be provided if not in executing context")  # 0.33.0's message

    bar = api.progress_bar()
    monkeypatch.setattr(bar._execution, "set_progress", no_context)
    bar.update_absolute(1, 3)
    bar.update_absolute(2, 3)
    assert rec.progress == [(1, 3, None), (2, 3, None)]  # the fake ProgressBar's records
