"""Every bundled API workflow through a real ComfyUI's /prompt, on odd inputs; errors and interrupts.

Outputs are read back as the PNGs SaveImage wrote (8 bits): "the same image" therefore means at most
one 8-bit level apart per value (a float difference up to 1e-4 can round to neighbouring levels).
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from PIL import Image

from tests.comfyui.comfy_helpers import (
    api_workflows,
    every_comfyui,
    harness,
    load_api,
    nodes_of,
    put_image,
    unique,
    with_unique_outputs,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.comfyui

RESTORERS = ("SSPIRSampler", "SSPIRRestore")
STEPS = 3  # the graph, sizes and batching are under test here, not the step count
ONE_LEVEL = 1 / 255 + 1e-6


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def odd_inputs() -> dict[str, tuple[np.ndarray, str]]:
    """Inputs a user can feed LoadImage: the smallest accepted (2 px), odd sizes, RGBA, grayscale."""
    rgba = _rng(2).integers(0, 256, (16, 21, 4), dtype=np.uint8)
    rgba[..., 3] = np.linspace(0, 255, 21, dtype=np.uint8)[None, :]  # a horizontal alpha ramp
    return {
        "2px": (np.array([[[200, 40, 90], [10, 250, 30]], [[0, 0, 0], [255, 255, 255]]], dtype=np.uint8), "RGB"),
        "odd_37x23": (_rng(1).integers(0, 256, (23, 37, 3), dtype=np.uint8), "RGB"),
        "rgba_21x16": (rgba, "RGBA"),
        "gray_19x31": (_rng(3).integers(0, 256, (31, 19), dtype=np.uint8), "L"),
    }


def restorer(prompt: dict) -> dict:
    ids = [nid for cls in RESTORERS for nid in nodes_of(prompt, cls)]
    assert len(ids) == 1, f"expected one restoring node, found {ids}"
    return prompt[ids[0]]["inputs"]


def expected_size(prompt: dict, width: int, height: int) -> tuple[int, int]:
    inputs = restorer(prompt)
    if inputs.get("width") and inputs.get("height"):
        return int(inputs["width"]), int(inputs["height"])
    up = float(inputs["upscale"])
    assert up == int(up), "the size check assumes an integer upscale"
    return width * int(up), height * int(up)


def with_images(prompt: dict, names: list[str], alpha: bool = False, steps: int | None = STEPS) -> dict:
    """Feed ``names`` as one batch: one LoadImage each, joined by core ImageBatch nodes.

    ``alpha``: LoadImage gives RGB + a mask; core JoinImageWithAlpha turns them back into the RGBA
    IMAGE a user's graph hands the pack. ``steps``: the restorer's steps (few, to keep tests short).
    """
    prompt = copy.deepcopy(prompt)
    loads = nodes_of(prompt, "LoadImage")
    assert len(loads) == 1, f"expected one LoadImage, found {loads}"
    load = loads[0]
    prompt[load]["inputs"]["image"] = names[0]
    source = [load, 0]
    added = set()
    if alpha:
        prompt["rgba"] = {"class_type": "JoinImageWithAlpha", "inputs": {"image": source, "alpha": [load, 1]}}
        source = ["rgba", 0]
        added.add("rgba")
    for i, name in enumerate(names[1:], start=1):
        prompt[f"load_{i}"] = {"class_type": "LoadImage", "inputs": {"image": name}}
        prompt[f"batch_{i}"] = {"class_type": "ImageBatch", "inputs": {"image1": source, "image2": [f"load_{i}", 0]}}
        source = [f"batch_{i}", 0]
        added.add(f"batch_{i}")
    for nid, node in prompt.items():
        if nid in added:
            continue
        for key, value in node["inputs"].items():
            if value == [load, 0]:
                node["inputs"][key] = source
    if steps is not None:
        restorer(prompt)["steps"] = steps
    return with_unique_outputs(prompt)


def run_and_read(server, prompt: dict) -> list[Image.Image]:
    entry = server.run(prompt, timeout=600)
    saves = nodes_of(prompt, "SaveImage")
    assert len(saves) == 1
    files = server.output_files(entry, node_id=saves[0])
    assert files, f"SaveImage wrote nothing: {entry.get('outputs')}"
    return [Image.open(f) for f in files]


@pytest.mark.parametrize("kind", sorted(odd_inputs()))
@pytest.mark.parametrize(
    "workflow", [pytest.param(w, marks=every_comfyui) if w == "sspir_restore.json" else w for w in api_workflows()]
)
def test_workflow_on_odd_input(server, workflow, kind):
    array, mode = odd_inputs()[kind]
    name = put_image(server, array, mode, tag=kind)
    prompt = with_images(load_api(workflow), [name], alpha=mode == "RGBA")
    (out,) = run_and_read(server, prompt)
    height, width = array.shape[:2]
    assert out.size == expected_size(prompt, width, height)
    values = np.asarray(out, dtype=np.float64) / 255
    assert np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1
    if kind == "rgba_21x16":
        # The alpha channel survives: it is the input's ramp, resized to the output.
        assert out.mode == "RGBA", out.mode
        alpha = np.asarray(out)[..., 3].astype(float)
        ramp = np.asarray(Image.fromarray(array[..., 3]).resize(out.size, Image.BILINEAR), dtype=float)
        assert np.abs(alpha - ramp).mean() < 8, "alpha is not the input's alpha resized"
        values = values[..., :3]
    else:
        assert out.mode == "RGB", out.mode
    assert values.std() > 0.01, "the output is flat: NaNs or a dead model saved as one colour"


@pytest.mark.parametrize("workflow", api_workflows())
def test_batch_of_three_equals_single_runs(server, workflow):
    """Each batch image equals its single-image run with the same seed (per-image captions included)."""
    arrays = [_rng(10 + i).integers(0, 256, (19, 27, 3), dtype=np.uint8) for i in range(3)]
    arrays[1][:] = arrays[1] // 4  # very different images, so a captioner writes different captions
    arrays[2][:, :13] = 255
    names = [put_image(server, a, "RGB", tag=f"batch{i}_") for i, a in enumerate(arrays)]
    base = load_api(workflow)
    prompt = with_images(base, names)
    captioners = nodes_of(prompt, "SSPIRCaption")
    if captioners:  # record the captions the batch used (core "Preview as Text" node)
        prompt["captions_seen"] = {"class_type": "PreviewAny", "inputs": {"source": [captioners[0], 0]}}
    entry = server.run(prompt, timeout=600)
    batch = [Image.open(f) for f in server.output_files(entry, node_id=nodes_of(prompt, "SaveImage")[0])]
    assert len(batch) == 3
    if captioners:
        captions = entry["outputs"]["captions_seen"]["text"]
        assert len(captions) == 3 and len(set(captions)) == 3, f"expected 3 different captions: {captions}"
    width, height = expected_size(prompt, 27, 19)
    for i, name in enumerate(names):
        (alone,) = run_and_read(server, with_images(base, [name]))
        a = np.asarray(batch[i], dtype=np.float64) / 255
        b = np.asarray(alone, dtype=np.float64) / 255
        assert a.shape == b.shape == (height, width, 3)
        diff = np.abs(a - b).max()
        assert diff <= ONE_LEVEL, f"batch image {i} differs from its single run by {diff * 255:.1f} levels"
    outs = [np.asarray(im, dtype=np.float64) for im in batch]
    assert np.abs(outs[0] - outs[1]).max() > 10, "batch images came out alike: inputs were mixed up"


def _first_workflow() -> dict:
    names = api_workflows()
    typed = [n for n in names if "typed" in n]
    return load_api((typed or names)[0])


def _assert_still_serves(server):
    assert server.alive(), server.log_tail()
    assert server.get("/system_stats")["system"]["comfyui_version"] == server.expect_version
    name = put_image(server, _rng(7).integers(0, 256, (4, 4, 3), dtype=np.uint8), "RGB", tag="after_")
    (out,) = run_and_read(server, with_images(_first_workflow(), [name]))
    assert out.size == expected_size(_first_workflow(), 4, 4)


def _with_sspir_weights(prompt: dict, file_name: str) -> dict:
    (loader,) = nodes_of(prompt, "SSPIRModelLoader")
    prompt[loader]["inputs"]["sspir_weights"] = file_name
    return prompt


def test_one_pixel_input_is_a_clear_node_error(server):
    """1 px cannot be restored (the VAE needs 8 px after upscaling): a node error that says so."""
    name = put_image(server, np.array([[[200, 40, 90]]], dtype=np.uint8), "RGB", tag="1px_")
    with pytest.raises(harness.ComfyUIError) as err:
        server.run(with_images(_first_workflow(), [name]))
    message = str(err.value)
    assert "1x1 px" in message and "at least" in message, message
    assert server.get("/system_stats")["system"]["comfyui_version"] == server.expect_version


def test_missing_model_file_is_a_clear_node_error(server):
    name = put_image(server, _rng(5).integers(0, 256, (8, 8, 3), dtype=np.uint8), "RGB", tag="missing_")
    missing = unique("no-such-weights-") + ".safetensors"
    prompt = _with_sspir_weights(with_images(_first_workflow(), [name]), missing)
    with pytest.raises(harness.ComfyUIError) as err:
        server.run(prompt)
    message = str(err.value)
    assert missing in message, message
    assert "Traceback" not in message
    _assert_still_serves(server)


CORRUPT = b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + bytes(range(256)) * 4


@pytest.mark.parametrize(
    "folder, loader, widget",
    [
        ("sspir", "SSPIRModelLoader", "sspir_weights"),
        ("checkpoints", "SSPIRModelLoader", "base_model"),
        ("clip_vision", "SSPIRClipVisionLoader", "clip_name"),
    ],
)
def test_corrupt_model_file_fails_at_its_loader_node(server, folder, loader, widget):
    """Loading is lazy, but the file is checked (header only) at the loader the user must fix: that node is
    the one history reports, not Structure Processor or CLIP Image Embed, and the message names the file."""
    corrupt = unique(f"corrupt-{folder}-") + ".safetensors"
    (server.models_dir / folder / corrupt).write_bytes(CORRUPT)
    name = put_image(server, _rng(6).integers(0, 256, (8, 8, 3), dtype=np.uint8), "RGB", tag="corrupt_")
    prompt = with_images(_first_workflow(), [name])
    (node_id,) = nodes_of(prompt, loader)
    prompt[node_id]["inputs"][widget] = corrupt
    with pytest.raises(harness.ComfyUIError) as err:
        server.run(prompt)
    message = str(err.value)
    assert f"node {node_id} ({loader}) failed" in message, message
    assert corrupt in message and "Traceback" not in message, message
    _assert_still_serves(server)


@pytest.mark.parametrize(
    "changes, widget, words",
    [
        ({"tile": 1}, "tile", "multiple of 8"),
        ({"tile": 7}, "tile", "got 7: try 8"),
        ({"tile": 32, "tile_overlap": 32}, "tile_overlap", "must be smaller than tile"),
        ({"cfg": 0.5}, "cfg", "between 1 and 30"),
    ],
)
def test_bad_widget_is_refused_when_queued_once_on_its_widget(server, changes, widget, words):
    """tile 1 passes the widget's min of 0; the node's validate_inputs refuses it (and tile <= tile_overlap,
    cfg between 0 and 1) when the prompt is queued, so nothing runs and no model loads. The node's errors
    name that one widget, once (issue 27: ComfyUI attached the message to all five checked widgets)."""
    name = put_image(server, _rng(12).integers(0, 256, (8, 8, 3), dtype=np.uint8), "RGB", tag="tile_")
    prompt = with_images(_first_workflow(), [name])
    restorer(prompt).update(changes)
    (sampler,) = [nid for cls in RESTORERS for nid in nodes_of(prompt, cls)]
    try:  # the other outputs (the structure preview) may still run: then /prompt answers 200 with node_errors
        reply = server.post("/prompt", {"prompt": prompt, "client_id": server.client_id})
        errors = reply.get("node_errors") or {}
    except harness.ComfyUIError as err:
        errors = json.loads(str(err).split(": ", 2)[-1]).get("node_errors") or {}
    assert list(errors) == [sampler], errors
    (error,) = errors[sampler]["errors"]
    assert error["extra_info"]["input_name"] == widget and words in error["details"], error


def test_interrupt_stops_a_long_run_and_the_next_prompt_runs(server):
    """POST /interrupt (the Cancel button), sent once ComfyUI's log shows the sampler's first step, stops the run
    inside the restoring node (its own cancel checks: ComfyUI names that node in execution_interrupted), long
    before its 500 steps (the log's next estimate, at step 126, never comes); the server runs the next prompt."""
    name = put_image(server, _rng(8).integers(0, 256, (32, 32, 3), dtype=np.uint8), "RGB", tag="long_")
    prompt = with_images(_first_workflow(), [name], steps=500)  # far longer than the test waits
    restorer(prompt)["seed"] = int(_rng(9).integers(0, 2**31))
    (sampler,) = [nid for cls in RESTORERS for nid in nodes_of(prompt, cls)]
    log_start = len(server.log_path.read_text(errors="replace"))

    def new_log() -> str:
        return server.log_path.read_text(errors="replace")[log_start:]

    prompt_id = server.queue(prompt)
    # The step-1 line is logged as step 2 starts: the sampler is in its loop (models loaded first, hence the guard).
    wait_until(lambda: "SSP-IR: step 1/500" in new_log(), "the sampler's first step in ComfyUI's log", guard=600)
    assert not server.get(f"/history/{prompt_id}"), "the long run finished before the interrupt: make it longer"
    server.interrupt()
    entry = server.wait(prompt_id, timeout=600)  # a hang guard; an ignored interrupt fails the asserts below
    interrupted = [data for kind, data in entry["status"]["messages"] if kind == "execution_interrupted"]
    assert interrupted, harness.prompt_error(entry)
    assert interrupted[0]["node_id"] == sampler, interrupted  # stopped by the sampler, not after it
    log = new_log()
    # the work was announced in ComfyUI's log before it started (size, tiles, steps)
    assert "SSP-IR: 1 image(s) to 128x128 px" in log and "500 steps x 1 latent tile(s)" in log, server.log_tail()
    assert "SSP-IR: step 126/500" not in log, server.log_tail()
    _assert_still_serves(server)
