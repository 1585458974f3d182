"""Nothing phones home from the ComfyUI entry point: the pack's nodes import, load and restore in a real server
whose every non-loopback lookup or connection is refused and recorded (``tests/netguard/``), with
``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` unset as a ComfyUI user has them. The library and CLI entry points,
and the control that shows the guard catches an import-time Hub lookup, are in ``tests/test_no_network.py``.
"""

from __future__ import annotations

import shutil

import pytest

from tests.comfyui.comfy_helpers import REPO, every_comfyui, harness, load_api, nodes_of, with_unique_outputs
from tests.test_no_network import GUARD, attempts, describe

pytestmark = [pytest.mark.comfyui, every_comfyui]


def test_nodes_import_load_and_restore_without_network(comfy_dir, demo_models, tmp_path):
    log = tmp_path / "net.jsonl"
    env = {
        "HF_HUB_OFFLINE": "",
        "TRANSFORMERS_OFFLINE": "",
        "PYTHONPATH": str(GUARD),
        "SSPIR_NETGUARD_LOG": str(log),
        "OMP_NUM_THREADS": "1",
    }
    srv = harness.ComfyServer(tmp_path / "work", models_dir=demo_models, comfy_dir=comfy_dir, env=env)
    srv.input_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "examples" / "astronaut_lq.png", srv.input_dir / "astronaut_lq.png")
    with srv:
        assert "SSPIRSampler" in srv.object_info()
        prompt = with_unique_outputs(load_api("sspir_restore_typed_caption.json"))
        for nid in nodes_of(prompt, "SSPIRSampler"):
            prompt[nid]["inputs"]["steps"] = 2  # the loaders and every node run; the step count is not under test
        entry = srv.run(prompt)
        assert harness.prompt_error(entry) is None, harness.prompt_error(entry)
        assert srv.output_files(entry), "the workflow wrote no image"
    found = attempts(log)
    assert not found, f"the ComfyUI process reached the network:\n{describe(found)}"
