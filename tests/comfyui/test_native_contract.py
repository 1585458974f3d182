"""The pack's host probes inside a real ComfyUI (the native test server; run it against another ComfyUI with
COMFYUI_DIR/COMFYUI_PYTHON): the control contract on the host's own UNet forward, a broken ``apply_control``
caught, the V3 API module and progress mechanism, the SSP-IR patcher and (where the host has it) a real MultiGPU
deep clone of it on the CPU. CUDA dynamic VRAM and several GPUs cannot run here."""

from __future__ import annotations

import json

import pytest

from sspir_core.demo import native_models
from tests.comfyui.comfy_helpers import every_comfyui, unique
from tests.comfyui.test_native import native_files, native_server  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.comfyui, every_comfyui]  # the contract is what a new ComfyUI may break


def test_host_probes(native_server):  # noqa: F811
    name = unique("probes")
    prompt = {
        "patch": {
            "class_type": "SSPIRPatchLoader",
            "inputs": {"sspir_weights": native_models.SSPIR_NAME, "dtype": "fp32"},
        },
        "probe": {"class_type": "SSPIRTestHostProbes", "inputs": {"sspir_patch": ["patch", 0], "name": name}},
    }
    native_server.run(prompt, timeout=600)
    info = json.loads((native_server.output_dir / f"{name}.json").read_text())
    print(json.dumps(info))
    # By hand for the probe's UNet (4 input blocks): input block i gets "input"[3 - i], the last of 2 "middle"
    # entries lands, output block k takes the skip of input block 3 - k with "output"[3 - k] on it.
    assert info["landing"] == {"input": [3, 2, 1, 0], "middle": 1, "skips": [3, 2, 1, 0], "output": [3, 2, 1, 0]}
    assert any(p.startswith("output: got") for p in info["broken_problems"]), info["broken_problems"]
    # ComfyUI 0.3.75 and 0.33.0 list no stable API version; latest is the newest, with set_progress
    assert info["api_module"] == "comfy_api.latest"
    assert info["progress"] == "_SetProgress"
    if info["has_deepclone"]:  # ComfyUI 0.33.0: the loader's factory reloads the weights for a MultiGPU copy
        assert info["has_cached_patcher_init"]
        assert info["copy_registered"] == ["cpu"] and info["copy_is_fresh"] and info["copy_equal"]
    else:  # 0.3.75: no MultiGPU, the patcher as before
        assert info["patcher_class"] == "ModelPatcher" and not info["has_cached_patcher_init"]
