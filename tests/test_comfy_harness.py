"""The real-ComfyUI harness's pure parts (scripts/comfyui.py, scripts/run_workflow.py), without a server."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import comfyui  # noqa: E402
import run_workflow  # noqa: E402


def test_requirements_drop_only_the_torch_build(tmp_path):
    (tmp_path / "requirements.txt").write_text(
        "comfyui-frontend-package==1.32.9\ntorch\ntorchsde\ntorchvision\ntorchaudio\n"
        "numpy>=1.25.0\n\n#non essential dependencies:\nkornia>=0.7.1  # comment\n"
    )
    assert comfyui.requirements(tmp_path) == [
        "comfyui-frontend-package==1.32.9",
        "torchsde",
        "numpy>=1.25.0",
        "kornia>=0.7.1",
        "requests",
    ]


def test_missing_requirements_checks_names_and_exact_pins(tmp_path):
    import pytest as installed  # a package this interpreter surely has

    (tmp_path / "requirements.txt").write_text(
        f"pytest=={installed.__version__}\npytest==0.0.1\nno-such-package-sspir>=1\n"
    )
    missing = comfyui.missing_requirements(tmp_path, sys.executable)
    assert missing == ["pytest==0.0.1", "no-such-package-sspir>=1"] + (
        [] if _has("requests") else ["requests"]
    )


def _has(name: str) -> bool:
    from importlib import metadata

    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def test_extra_model_paths_is_yaml_naming_each_folder(tmp_path):
    yaml = pytest.importorskip("yaml")
    path = tmp_path / "extra_model_paths.yaml"
    comfyui.write_extra_model_paths(path, tmp_path / "my models", ("checkpoints", "LLM"))
    assert yaml.safe_load(path.read_text()) == {
        "sspir_models": {"base_path": str((tmp_path / "my models").resolve()), "checkpoints": "checkpoints", "LLM": "LLM"}
    }


def test_prompt_error_names_the_node_and_message():
    entry = {
        "status": {
            "status_str": "error",
            "messages": [
                ["execution_start", {}],
                [
                    "execution_error",
                    {"node_id": "2", "node_type": "SSPIRModelLoader", "exception_type": "InputError",
                     "exception_message": "sspir_weights: 'x.safetensors' was not found\n"},
                ],
            ],
        }
    }
    assert comfyui.prompt_error(entry) == (
        "node 2 (SSPIRModelLoader) failed: InputError: sspir_weights: 'x.safetensors' was not found"
    )
    assert comfyui.prompt_error({"status": {"status_str": "success", "messages": []}}) is None


def test_rejected_prompt_lists_each_node_error():
    body = {
        "error": {"message": "Prompt outputs failed validation"},
        "node_errors": {"5": {"class_type": "SaveImage", "errors": [{"message": "Required input is missing", "details": "images"}]}},
    }
    text = comfyui._explain_rejection("/prompt: HTTP 400: " + json.dumps(body))
    assert text == "Prompt outputs failed validation; node 5 (SaveImage): Required input is missing: images"


def test_run_workflow_refuses_a_ui_workflow_and_names_its_api_twin(tmp_path):
    (tmp_path / "api").mkdir()
    ui = tmp_path / "wf.json"
    ui.write_text(json.dumps({"nodes": [], "links": []}))
    (tmp_path / "api" / "wf.json").write_text("{}")
    with pytest.raises(SystemExit, match=r"UI-format.*api/wf\.json"):
        run_workflow.load_api_workflow(ui)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"1": {"inputs": {}}}))
    with pytest.raises(SystemExit, match="not an API-format"):
        run_workflow.load_api_workflow(bad)


def test_run_workflow_points_every_loadimage_at_the_input():
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}},
    }
    assert run_workflow.set_input_image(prompt, "photo.png") == 1
    assert prompt["1"]["inputs"]["image"] == "photo.png" and prompt["2"]["inputs"] == {"images": ["1", 0]}


def test_user_comfyui_dir_without_main_py_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("COMFYUI_DIR", str(tmp_path))
    with pytest.raises(comfyui.ComfyUIError, match="COMFYUI_DIR=.*no main.py"):
        comfyui.fetch()
