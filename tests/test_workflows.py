"""The bundled workflows: up to date with their generator, every link and widget matching the node schemas."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sspir_core.demo import model_files as demo_models
from sspir_core.demo import native_models
from tests import fake_comfy
from tests.conftest import REPO

WIDGET_TYPES = {"STRING", "INT", "FLOAT", "BOOLEAN", "COMBO"}
# ComfyUI 0.3.75 core nodes the workflows use: socket inputs, outputs, widgets (UI order).
CORE = {
    "LoadImage": ([], [("IMAGE", "IMAGE"), ("MASK", "MASK")], ["image", "upload"]),
    "SaveImage": ([("images", "IMAGE")], [], ["filename_prefix"]),
    "PreviewImage": ([("images", "IMAGE")], [], []),
    "PreviewAny": ([("source", "*")], [], []),
    "CheckpointLoaderSimple": ([], [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")], ["ckpt_name"]),
    "CLIPVisionLoader": ([], [("CLIP_VISION", "CLIP_VISION")], ["clip_name"]),
    "KSampler": (
        [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent_image", "LATENT")],
        [("LATENT", "LATENT")],
        ["seed", "control_after_generate", "steps", "cfg", "sampler_name", "scheduler", "denoise"],
    ),
    "VAEDecode": ([("samples", "LATENT"), ("vae", "VAE")], [("IMAGE", "IMAGE")], []),
}
NAMES = [
    "sspir_restore",
    "sspir_restore_typed_caption",
    "sspir_restore_one_step",
    "sspir_native",
    "sspir_native_one_step",
]


@pytest.fixture
def schemas(monkeypatch, tmp_path):
    files = {**demo_models.DEMO_FILES, **{f"native_{k}": v for k, v in native_models.NATIVE_FILES.items()}}
    for kind, (folder, name) in files.items():  # names only: the combos list them
        path = tmp_path / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "captioner":
            path.mkdir()
            (path / "config.json").write_text("{}")
        else:
            path.write_bytes(b"")
    fake_comfy.install(monkeypatch, str(tmp_path))
    import nodes

    out = {}
    for cls in nodes.node_list():
        s = cls.define_schema()
        sockets = [(i.id, i.io_type) for i in s.inputs if i.io_type not in WIDGET_TYPES]
        widgets = [(i.id, i.io_type, i.kw) for i in s.inputs if i.io_type in WIDGET_TYPES]
        out[s.node_id] = (sockets, [(o.display_name, o.io_type) for o in s.outputs], widgets)
    return out


def _has_control(widget) -> bool:
    """Whether the front end saves a "control after generate" value after this widget: asked for, or an INT
    named seed/noise_seed that does not say False (the front end adds the control to those by itself)."""
    name, io_type, kw = widget
    flag = kw.get("control_after_generate")
    return bool(flag) or (flag is None and io_type == "INT" and name in ("seed", "noise_seed"))


def _load(*parts):
    return json.loads((REPO / "example_workflows" / "/".join(parts)).read_text())


def test_files_are_what_the_generator_writes():
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_workflows.py"), "--check"], capture_output=True, text=True
    )
    assert out.returncode == 0, f"{out.stdout}{out.stderr}\nrun: python scripts/make_workflows.py"


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_links_and_widgets_match_the_schemas(name, schemas):
    wf = _load(f"{name}.json")
    assert wf["version"] == 0.4 and wf["groups"] and wf["last_link_id"] == len(wf["links"])
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert max(nodes) == wf["last_node_id"]
    for n in wf["nodes"]:
        if n["type"] in CORE:
            sockets, outputs, widget_names = CORE[n["type"]]
            assert len(n["widgets_values"]) == len(widget_names), n["type"]
        else:
            sockets, outputs, widgets = schemas[n["type"]]
            expected_len = sum(2 if _has_control(w) else 1 for w in widgets)
            assert len(n["widgets_values"]) == expected_len, n["type"]
            values = iter(n["widgets_values"])
            for wid, io_type, kw in widgets:  # each value fits its widget, in schema order
                value = next(values)
                if io_type == "COMBO" and kw.get("options"):
                    assert value in kw["options"], (n["type"], wid, value)
                elif io_type in ("INT", "FLOAT"):
                    assert isinstance(value, (int, float)) and kw.get("min", value) <= value <= kw.get("max", value)
                elif io_type == "BOOLEAN":
                    assert isinstance(value, bool)
                elif io_type == "STRING":
                    assert isinstance(value, str)
                if _has_control((wid, io_type, kw)):
                    assert next(values) in ("fixed", "increment", "decrement", "randomize")
        socket_inputs = [(i["name"], i["type"]) for i in n["inputs"] if "widget" not in i]
        assert socket_inputs == sockets, n["type"]
        assert [(o["name"], o["type"]) for o in n["outputs"]] == outputs, n["type"]
    for link_id, src, src_slot, dst, dst_slot, link_type in wf["links"]:
        out = nodes[src]["outputs"][src_slot]
        inp = nodes[dst]["inputs"][dst_slot]
        assert link_id in out["links"] and inp["link"] == link_id
        assert out["type"] == link_type and inp["type"] in (link_type, "*"), (src, dst, link_type)
        if "widget" in inp:  # a widget fed by a link: its schema type must be the link's type
            _, _, widgets = schemas[nodes[dst]["type"]]
            assert {w[0]: w[1] for w in widgets}[inp["widget"]["name"]] == link_type
    # every socket of our nodes is connected (optional ones may stay open)
    for n in wf["nodes"]:
        for i in n["inputs"]:
            assert i["link"] is not None, (n["type"], i["name"])


@pytest.mark.parametrize("name", NAMES)
def test_api_twin_runs_the_same_graph(name, schemas):
    ui, api = _load(f"{name}.json"), _load("api", f"{name}.json")
    nodes = {str(n["id"]): n for n in ui["nodes"]}
    assert {k: v["class_type"] for k, v in api.items()} == {k: n["type"] for k, n in nodes.items()}
    for link_id, src, src_slot, dst, dst_slot, _ in ui["links"]:
        name_in = nodes[str(dst)]["inputs"][dst_slot]["name"]
        assert api[str(dst)]["inputs"][name_in] == [str(src), src_slot], link_id
    for key, node in api.items():
        if node["class_type"] in CORE:
            continue
        _, _, widgets = schemas[node["class_type"]]
        linked = {i["name"] for i in nodes[key]["inputs"] if i["link"] is not None}
        for wid, _, _ in widgets:
            assert wid in node["inputs"], (node["class_type"], wid)
            if wid not in linked:  # a widget's value is the same in both files
                ui_values = [v for v in nodes[key]["widgets_values"] if v not in ("fixed",)]
                assert node["inputs"][wid] in ui_values
    # the model files are the ones `sspir demo-models` writes; the input is the bundled sample
    files = {v["class_type"]: v["inputs"] for v in api.values()}
    if "SSPIRPatchLoader" in files:  # the native route: ComfyUI's loaders on `sspir demo-models --native` files
        assert files["CheckpointLoaderSimple"]["ckpt_name"] == native_models.SD_NAME
        one_step = name == "sspir_native_one_step"
        assert files["SSPIRPatchLoader"]["sspir_weights"] == (
            native_models.ONE_STEP_NAME if one_step else native_models.SSPIR_NAME
        )
        sampling = files["KSampler"]
        assert (sampling["steps"], sampling["cfg"]) == ((1, 1.0) if one_step else (50, 7.5))
        assert files["CLIPVisionLoader"]["clip_name"] == native_models.CLIP_VISION_NAME
    else:
        loader = files["SSPIRModelLoader"]
        weights = demo_models.ONE_STEP_NAME if name == "sspir_restore_one_step" else demo_models.SSPIR_NAME
        assert (loader["base_model"], loader["sspir_weights"]) == (demo_models.SD_NAME, weights)
        assert files["SSPIRClipVisionLoader"]["clip_name"] == demo_models.CLIP_VISION_NAME
    assert next(v for v in api.values() if v["class_type"] == "LoadImage")["inputs"]["image"] == "astronaut_lq.png"
    save = next(v for v in api.values() if v["class_type"] == "SaveImage")["inputs"]
    assert save["filename_prefix"].startswith("sspir")
    captioners = [v["inputs"] for v in api.values() if v["class_type"] == "SSPIRCaptionerLoader"]
    assert all(c["model"] == demo_models.LLM_NAME for c in captioners)
    assert bool(captioners) == (name in ("sspir_restore", "sspir_native", "sspir_native_one_step"))


def test_generator_describes_widgets_in_schema_order(schemas, monkeypatch):
    """widgets_values carry no names: the description's order must be the schema's, name by name."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_workflows", REPO / "scripts" / "make_workflows.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "make_workflows", module)
    spec.loader.exec_module(module)
    for wf in module.WORKFLOWS:
        for node in wf.nodes:
            names = [w for w in node.widgets if w not in module.UI_ONLY]
            if node.type in CORE:
                assert names == [
                    w for w in CORE[node.type][2] if w not in (*module.UI_ONLY, "control_after_generate")
                ], node.type
            else:
                assert names == [w[0] for w in schemas[node.type][2]], (wf.name, node.type)
            assert [(a, b) for a, b in module.SOCKETS[node.type][1]] == (
                CORE[node.type][1] if node.type in CORE else schemas[node.type][1]
            )


# ComfyUI 0.3.75, app/custom_node_manager.py: /workflow_templates lists <pack>/<folder>/*.json for each of these
# folder names, but /api/workflow_templates/<pack>/ serves only the first that exists.
TEMPLATE_FOLDERS = ["example_workflows", "example", "examples", "workflow", "workflows"]


def test_every_template_comfyui_lists_is_in_the_folder_it_serves_with_a_jpeg_thumbnail():
    """A listed JSON in a folder that another one hides loads nothing ("Unexpected end of JSON input"); the front
    end (1.32.9) asks for <name>.jpg beside each template for its card."""
    from PIL import Image

    served = next(f for f in TEMPLATE_FOLDERS if (REPO / f).is_dir())
    listed = [p for f in TEMPLATE_FOLDERS if (REPO / f).is_dir() for p in sorted((REPO / f).glob("*.json"))]
    assert sorted(p.stem for p in listed) == sorted(NAMES)
    assert {p.parent.name for p in listed} == {served}, (served, listed)
    for p in listed:
        with Image.open(p.with_suffix(".jpg")) as thumb:
            assert thumb.format == "JPEG" and thumb.width == thumb.height >= 256, (p.name, thumb.size)
