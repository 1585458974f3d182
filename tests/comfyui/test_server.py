"""The pack inside a real ComfyUI: it imports, and /object_info shows every node of the contract."""

from __future__ import annotations

import pytest

from tests.comfyui.comfy_helpers import every_comfyui

pytestmark = [pytest.mark.comfyui, every_comfyui]

# From NODES-CONTRACT.md (the agreement between the node classes and this harness), not from the code.
CONTRACT = {
    "SSPIRModelLoader": ("SSP-IR Model Loader", "SSP-IR/loaders", ["SSPIR_MODEL"]),
    "SSPIRClipVisionLoader": ("SSP-IR CLIP Vision Loader", "SSP-IR/loaders", ["SSPIR_CLIP_VISION"]),
    "SSPIRCaptionerLoader": ("SSP-IR Captioner Loader", "SSP-IR/loaders", ["SSPIR_CAPTIONER"]),
    "SSPIRCaption": ("MLLM Caption (SSP-IR)", "SSP-IR", ["STRING"]),
    "SSPIRClipImageEmbed": ("CLIP Image Embed (SSP-IR)", "SSP-IR", ["SSPIR_IMAGE_EMBED"]),
    "SSPIRStructureProcessor": ("Structure Processor (SSP-IR)", "SSP-IR", ["SSPIR_STRUCTURE", "IMAGE"]),
    "SSPIRSampler": ("PGA Sampler (SSP-IR)", "SSP-IR", ["IMAGE"]),
    "SSPIRRestore": ("SSP-IR Restore (all in one)", "SSP-IR", ["IMAGE", "STRING"]),
}
# The file names `sspir demo-models` writes (NODES-CONTRACT.md), as the loaders must list them.
DEMO_CHOICES = {
    "SSPIRModelLoader": {"sspir-demo-sd15.safetensors", "sspir-demo.safetensors"},
    "SSPIRClipVisionLoader": {"sspir-demo-clip-vision.safetensors"},
    "SSPIRCaptionerLoader": {"sspir-demo-llava"},
}


@pytest.fixture(scope="module")
def object_info(server) -> dict:
    return server.object_info()


def _inputs(info: dict) -> dict:
    return {**info["input"].get("required", {}), **info["input"].get("optional", {})}


def test_pack_imports_without_failure(server):
    log = server.log_path.read_text(errors="replace")
    assert "custom_nodes/ComfyUI-SSPIR" in log, "ComfyUI did not try to load the pack"
    failed = [line for line in log.splitlines() if "IMPORT FAILED" in line and "ComfyUI-SSPIR" in line]
    assert not failed, "\n".join(failed) + "\n" + server.log_tail()


@pytest.mark.parametrize("node_id", sorted(CONTRACT))
def test_node_in_object_info(object_info, node_id):
    assert node_id in object_info, (
        f"{node_id} not registered; SSP-IR nodes present: {sorted(k for k in object_info if 'SSPIR' in k)}"
    )
    info = object_info[node_id]
    display, category, outputs = CONTRACT[node_id]
    assert info["display_name"] == display
    assert info["category"] == category
    assert info["output"] == outputs
    assert info["python_module"].startswith("custom_nodes."), info["python_module"]
    inputs = _inputs(info)
    assert inputs, f"{node_id} has no inputs"
    untipped = [name for name, spec in inputs.items() if len(spec) < 2 or not spec[1].get("tooltip")]
    assert not untipped, f"{node_id} inputs without a tooltip: {untipped}"


def test_caption_node_gives_one_string_per_image(object_info):
    assert object_info["SSPIRCaption"]["output_is_list"] == [True]


@pytest.mark.parametrize("node_id", sorted(DEMO_CHOICES))
def test_loaders_list_the_demo_models(object_info, node_id):
    """The model folders from extra_model_paths.yaml reach the loaders' choices (merged, not replaced)."""
    choices = set()
    for spec in _inputs(object_info[node_id]).values():
        if isinstance(spec[0], list):  # V1-style combo
            choices |= set(spec[0])
        elif spec[0] == "COMBO":
            choices |= set(spec[1].get("options", []))
    missing = DEMO_CHOICES[node_id] - choices
    assert not missing, f"{node_id} does not offer {missing}; its choices: {sorted(choices)}"


def test_workflow_inputs_exist(object_info):
    """Every input the bundled API workflows set is one the node declares (catches renamed sockets)."""
    from tests.comfyui.comfy_helpers import api_workflows, load_api

    names = api_workflows(native=True)
    assert names, "no example_workflows/api/*.json"
    for name in names:
        for nid, node in load_api(name).items():
            assert node["class_type"] in object_info, f"{name}: node {nid} is {node['class_type']}, not registered"
            declared = _inputs(object_info[node["class_type"]])
            unknown = set(node["inputs"]) - set(declared)
            assert not unknown, f"{name}: node {nid} ({node['class_type']}) sets undeclared inputs {unknown}"
