"""Write the bundled workflows (UI format and API format) from one description, so the twins never drift.

    python scripts/make_workflows.py           # (re)write example_workflows/*.json and example_workflows/api/*.json
    python scripts/make_workflows.py --check   # exit 1 if a file differs from what this script writes

Each node is described once: its type, position, the values of its widgets in the order of the node's
inputs, and which output feeds which input. tests/test_workflows.py checks every link and widget against the
node schemas, so a changed node shows up as a failing test instead of a workflow that will not load.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BROWSER_CHECK = REPO / "tests" / "comfyui" / "browser_check.js"  # opens a template in ComfyUI's front end
WORKFLOW_DIR = "example_workflows"
"""ComfyUI's documented folder: of example_workflows/, example/, examples/, workflow/, example_workflows/ it serves the
first that exists under /api/workflow_templates/<pack>/ (app/custom_node_manager.py), and lists the *.json
directly inside each in its Templates dialog (api/ below is not listed: those are API-format twins)."""
sys.path.insert(0, str(REPO))

from sspir_core.demo import model_files as demo_models  # noqa: E402  (names written by `sspir demo-models`)
from sspir_core.demo import native_models  # noqa: E402  (`sspir demo-models --native`)

INPUT_IMAGE = "astronaut_lq.png"  # the harness copies examples/astronaut_lq.png into ComfyUI's input/
TYPED_CAPTION = (
    "a portrait photo of a smiling astronaut in an orange flight suit holding a white helmet, "
    "the American flag and a model of the space shuttle behind her"
)

# Socket inputs and outputs of every node type used, in schema order: (name, type). Widgets are given per node.
SOCKETS: dict[str, tuple[list[tuple[str, str]], list[tuple[str, str]]]] = {
    "LoadImage": ([], [("IMAGE", "IMAGE"), ("MASK", "MASK")]),
    "SaveImage": ([("images", "IMAGE")], []),
    "PreviewImage": ([("images", "IMAGE")], []),
    "PreviewAny": ([("source", "*")], []),
    "SSPIRModelLoader": ([], [("sspir_model", "SSPIR_MODEL")]),
    "SSPIRClipVisionLoader": ([], [("clip_vision", "SSPIR_CLIP_VISION")]),
    "SSPIRCaptionerLoader": ([], [("captioner", "SSPIR_CAPTIONER")]),
    "SSPIRCaption": ([("captioner", "SSPIR_CAPTIONER"), ("image", "IMAGE")], [("caption", "STRING")]),
    "SSPIRClipImageEmbed": (
        [("sspir_model", "SSPIR_MODEL"), ("clip_vision", "SSPIR_CLIP_VISION"), ("image", "IMAGE")],
        [("image_embed", "SSPIR_IMAGE_EMBED")],
    ),
    "SSPIRStructureProcessor": (
        [("sspir_model", "SSPIR_MODEL"), ("image", "IMAGE")],
        [("structure", "SSPIR_STRUCTURE"), ("rgb_preview", "IMAGE")],
    ),
    "SSPIRSampler": (
        [
            ("sspir_model", "SSPIR_MODEL"),
            ("image", "IMAGE"),
            ("image_embed", "SSPIR_IMAGE_EMBED"),
            ("structure", "SSPIR_STRUCTURE"),
        ],
        [("image", "IMAGE")],
    ),
    # the native route: ComfyUI's own loaders and sampler around the SSP-IR patch nodes
    "CheckpointLoaderSimple": ([], [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]),
    "CLIPVisionLoader": ([], [("CLIP_VISION", "CLIP_VISION")]),
    "KSampler": (
        [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent_image", "LATENT")],
        [("LATENT", "LATENT")],
    ),
    "VAEDecode": ([("samples", "LATENT"), ("vae", "VAE")], [("IMAGE", "IMAGE")]),
    "SSPIRPatchLoader": ([], [("sspir_patch", "SSPIR_PATCH")]),
    "SSPIRTextEncode": ([("clip", "CLIP")], [("positive", "CONDITIONING"), ("negative", "CONDITIONING")]),
    "SSPIRLQLatent": ([("image", "IMAGE"), ("vae", "VAE")], [("latent", "LATENT"), ("image", "IMAGE")]),
    "SSPIRApply": (
        [("model", "MODEL"), ("sspir_patch", "SSPIR_PATCH"), ("clip_vision", "CLIP_VISION"), ("image", "IMAGE")],
        [("model", "MODEL")],
    ),
    "SSPIRColorFix": ([("image", "IMAGE"), ("reference", "IMAGE")], [("image", "IMAGE")]),
}
# Widgets that exist only in the UI (not sent in the API prompt): LoadImage's upload button; and the
# widgets followed in the UI by their "control after generate" value.
UI_ONLY = {"upload"}
CONTROL_AFTER_GENERATE = {"SSPIRSampler": {"seed"}, "KSampler": {"seed"}}

SIZE = {"upscale": 4.0, "width": 0, "height": 0}
SAMPLING = {  # the paper's settings (RestoreOptions defaults)
    "negative_prompt": "",
    "seed": 0,
    "steps": 50,
    "cfg": 7.5,
    "scheduler": "ddpm",
    "start": "lq",
    "conditioning_scale": 1.0,
    **SIZE,
    "tile": 96,
    "tile_overlap": 32,
    "vae_tile": 1024,
    "color_fix": "adain",
}


@dataclass
class Node:
    id: int
    type: str
    pos: tuple[int, int]
    size: tuple[int, int]
    widgets: dict[str, Any] = field(default_factory=dict)
    title: str | None = None


@dataclass
class Workflow:
    name: str
    nodes: list[Node]
    links: list[tuple[int, str, int, str]]  # (from node, output name, to node, input name)
    groups: list[tuple[str, tuple[int, int, int, int]]]


# Room above the nodes for each group's title (nodes sit this much lower than their described position).
GROUP_TITLE = 50
NODE_TITLE = 30  # LiteGraph's NODE_TITLE_HEIGHT: a node's title bar is drawn above its pos
# Load Image shows its picture below its widgets: the front end makes it about 315 px high (its own title bar
# of 30 px above that), so the Models group, and the title bar on top of it, start below it with some room.
LOAD_IMAGE_SIZE = (340, 320)
MODELS_TOP = 40 + LOAD_IMAGE_SIZE[1] + 80


def _loaders(sspir_weights: str = demo_models.SSPIR_NAME) -> list[Node]:
    return [
        Node(
            2,
            "SSPIRModelLoader",
            (40, MODELS_TOP + 30),
            (340, 250),
            {
                "base_model": demo_models.SD_NAME,
                "sspir_weights": sspir_weights,
                "base": "auto",
                "device": "auto",
                "dtype": "auto",
                "offload": "auto",
                "cache": "in RAM",
            },
        ),
        Node(
            3, "SSPIRClipVisionLoader", (40, MODELS_TOP + 310), (340, 60), {"clip_name": demo_models.CLIP_VISION_NAME}
        ),
    ]


def _priors() -> list[Node]:
    return [
        Node(7, "SSPIRClipImageEmbed", (440, 420), (320, 150), dict(SIZE)),
        Node(8, "SSPIRStructureProcessor", (440, 620), (320, 130), dict(SIZE)),
        Node(9, "PreviewImage", (440, 800), (320, 300), {}, title="Structure prior (RGB at 1/2, 1/4, 1/8)"),
    ]


def _restore_nodes(caption: str, sampling: dict | None = None) -> list[Node]:
    return [
        Node(10, "SSPIRSampler", (820, 40), (380, 620), {"caption": caption, **(sampling or SAMPLING)}),
        Node(11, "SaveImage", (1240, 40), (420, 460), {"filename_prefix": "sspir"}),
    ]


PRIOR_LINKS = [
    (1, "IMAGE", 7, "image"),
    (2, "sspir_model", 7, "sspir_model"),
    (3, "clip_vision", 7, "clip_vision"),
    (1, "IMAGE", 8, "image"),
    (2, "sspir_model", 8, "sspir_model"),
    (8, "rgb_preview", 9, "images"),
    (2, "sspir_model", 10, "sspir_model"),
    (1, "IMAGE", 10, "image"),
    (7, "image_embed", 10, "image_embed"),
    (8, "structure", 10, "structure"),
    (10, "image", 11, "images"),
]

WORKFLOWS = [
    Workflow(
        "sspir_restore",
        [
            Node(1, "LoadImage", (40, 40), LOAD_IMAGE_SIZE, {"image": INPUT_IMAGE, "upload": "image"}),
            *_loaders(),
            Node(
                4,
                "SSPIRCaptionerLoader",
                (40, MODELS_TOP + 410),
                (340, 330),
                {
                    "backend": "llava",
                    "model": demo_models.LLM_NAME,
                    "url": "http://127.0.0.1:11434/v1",
                    "server_model": "",
                    "prompt": "",
                    "max_new_tokens": 0,
                    "seed": 0,
                    "device": "auto",
                    "dtype": "auto",
                    "trust_remote_code": False,
                    "keep_loaded": False,
                },
            ),
            Node(5, "SSPIRCaption", (440, 40), (320, 80), {}),
            Node(6, "PreviewAny", (440, 170), (320, 200), {}, title="Caption (edit: type it into the sampler)"),
            *_priors(),
            *_restore_nodes(""),
        ],
        [
            (4, "captioner", 5, "captioner"),
            (1, "IMAGE", 5, "image"),
            (5, "caption", 6, "source"),
            (5, "caption", 10, "caption"),
            *PRIOR_LINKS,
        ],
        [("Models", (20, MODELS_TOP, 380, 770)), ("Priors", (420, 0, 360, 1120)), ("Restore", (800, 0, 880, 680))],
    ),
    Workflow(
        "sspir_restore_typed_caption",
        [
            Node(1, "LoadImage", (40, 40), LOAD_IMAGE_SIZE, {"image": INPUT_IMAGE, "upload": "image"}),
            *_loaders(),
            *_priors(),
            *_restore_nodes(TYPED_CAPTION),
        ],
        list(PRIOR_LINKS),
        [("Models", (20, MODELS_TOP, 380, 400)), ("Priors", (420, 390, 360, 730)), ("Restore", (800, 0, 880, 680))],
    ),
    Workflow(  # one-step SSP-IR (an extension, not the paper): steps/cfg 0 = the checkpoint's own (1 step, no CFG)
        "sspir_restore_one_step",
        [
            Node(1, "LoadImage", (40, 40), LOAD_IMAGE_SIZE, {"image": INPUT_IMAGE, "upload": "image"}),
            *_loaders(demo_models.ONE_STEP_NAME),
            *_priors(),
            *_restore_nodes(TYPED_CAPTION, {**SAMPLING, "steps": 0, "cfg": 0.0}),
        ],
        list(PRIOR_LINKS),
        [("Models", (20, MODELS_TOP, 380, 400)), ("Priors", (420, 390, 360, 730)), ("Restore", (800, 0, 880, 680))],
    ),
]


def _captioner(node_id: int, pos: tuple[int, int]) -> Node:
    return Node(
        node_id,
        "SSPIRCaptionerLoader",
        pos,
        (340, 330),
        {
            "backend": "llava",
            "model": demo_models.LLM_NAME,
            "url": "http://127.0.0.1:11434/v1",
            "server_model": "",
            "prompt": "",
            "max_new_tokens": 0,
            "seed": 0,
            "device": "auto",
            "dtype": "auto",
            "trust_remote_code": False,
            "keep_loaded": False,
        },
    )


# The native route: the user's checkpoint through ComfyUI's loaders, SSP-IR as a patch, KSampler. KSampler's
# "ddim_uniform" scheduler at 50 steps gives the paper's timesteps (981, 961, ..., 1, then 0) and "ddpm" its
# sampler; Apply SSP-IR's start "paper" starts from the LQ latent noised to t=999.
NATIVE = Workflow(
    "sspir_native",
    [
        Node(1, "LoadImage", (40, 40), LOAD_IMAGE_SIZE, {"image": INPUT_IMAGE, "upload": "image"}),
        Node(2, "CheckpointLoaderSimple", (40, MODELS_TOP + 30), (340, 100), {"ckpt_name": native_models.SD_NAME}),
        Node(3, "CLIPVisionLoader", (40, MODELS_TOP + 180), (340, 60), {"clip_name": native_models.CLIP_VISION_NAME}),
        Node(
            6,
            "SSPIRPatchLoader",
            (40, MODELS_TOP + 290),
            (340, 90),
            {"sspir_weights": native_models.SSPIR_NAME, "dtype": "auto"},
        ),
        _captioner(4, (40, MODELS_TOP + 430)),
        Node(5, "SSPIRCaption", (440, 40), (320, 80), {}),
        Node(14, "PreviewAny", (440, 170), (320, 200), {}, title="Caption"),
        Node(
            7,
            "SSPIRTextEncode",
            (440, 420),
            (320, 200),
            {"caption": "", "negative_prompt": "", "max_chunks": 4, "mixed_lengths": "pad to longest"},
        ),
        Node(8, "SSPIRLQLatent", (440, 700), (320, 170), {**SIZE, "vae_tile": 1024}),
        Node(
            9,
            "SSPIRApply",
            (820, 40),
            (340, 300),
            {
                "strength": 1.0,
                "start_percent": 0.0,
                "end_percent": 1.0,
                "start": "paper",
                "processor_tile": 1024,
                "tile": 96,
                "tile_overlap": 32,
            },
        ),
        Node(
            10,
            "KSampler",
            (820, 370),
            (340, 270),
            {"seed": 0, "steps": 50, "cfg": 7.5, "sampler_name": "ddpm", "scheduler": "ddim_uniform", "denoise": 1.0},
        ),
        Node(11, "VAEDecode", (820, 690), (340, 50), {}),
        Node(12, "SSPIRColorFix", (1200, 40), (340, 90), {"method": "adain"}),
        Node(13, "SaveImage", (1200, 180), (420, 460), {"filename_prefix": "sspir_native"}),
    ],
    [
        (4, "captioner", 5, "captioner"),
        (1, "IMAGE", 5, "image"),
        (5, "caption", 14, "source"),
        (2, "CLIP", 7, "clip"),
        (5, "caption", 7, "caption"),
        (1, "IMAGE", 8, "image"),
        (2, "VAE", 8, "vae"),
        (2, "MODEL", 9, "model"),
        (6, "sspir_patch", 9, "sspir_patch"),
        (3, "CLIP_VISION", 9, "clip_vision"),
        (8, "image", 9, "image"),
        (9, "model", 10, "model"),
        (7, "positive", 10, "positive"),
        (7, "negative", 10, "negative"),
        (8, "latent", 10, "latent_image"),
        (10, "LATENT", 11, "samples"),
        (2, "VAE", 11, "vae"),
        (11, "IMAGE", 12, "image"),
        (8, "image", 12, "reference"),
        (12, "image", 13, "images"),
    ],
    [
        ("Models", (20, MODELS_TOP, 380, 780)),
        ("Caption and latent", (420, 0, 360, 900)),
        ("Sample", (800, 0, 380, 760)),
        ("Output", (1180, 0, 460, 660)),
    ],
)
WORKFLOWS.append(NATIVE)


def _one_step_node(node: Node) -> Node:
    """A node of the native workflow as the one-step one has it: the one-step weights, KSampler's one step."""
    widgets = {
        "SSPIRPatchLoader": {"sspir_weights": native_models.ONE_STEP_NAME},
        "KSampler": {"steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple"},
        "SaveImage": {"filename_prefix": "sspir_native_one_step"},
    }.get(node.type)
    return replace(node, widgets={**node.widgets, **widgets}) if widgets else node


# One-step SSP-IR (an extension, not the paper) on the native route: the same graph with the one-step weights.
# Apply SSP-IR adds their UNet LoRA to the MODEL and, with start "paper", starts from the LQ latent itself at
# t=999; KSampler's one step (scheduler simple: sigma_999 -> 0) with euler and cfg 1 (no CFG) is OSEDiff's x0.
WORKFLOWS.append(replace(NATIVE, name="sspir_native_one_step", nodes=[_one_step_node(n) for n in NATIVE.nodes]))


def _order(wf: Workflow) -> dict[int, int]:
    """Execution order (topological) for the UI file's ``order`` fields."""
    deps = {n.id: {a for a, _, b, _ in wf.links if b == n.id} for n in wf.nodes}
    order: dict[int, int] = {}
    while len(order) < len(deps):
        ready = sorted(i for i, d in deps.items() if i not in order and d <= set(order))
        if not ready:
            raise ValueError(f"{wf.name}: links form a cycle")
        for i in ready:
            order[i] = len(order)
    return order


def ui_workflow(wf: Workflow) -> dict[str, Any]:
    by_id = {n.id: n for n in wf.nodes}
    links = []
    inputs: dict[int, list[dict[str, Any]]] = {n.id: [] for n in wf.nodes}
    outputs: dict[int, list[dict[str, Any]]] = {}
    for n in wf.nodes:
        socket_in, socket_out = SOCKETS[n.type]
        inputs[n.id] = [{"name": name, "type": t, "link": None} for name, t in socket_in]
        outputs[n.id] = [
            {"name": name, "type": t, "links": [], "slot_index": i} for i, (name, t) in enumerate(socket_out)
        ]
    for link_id, (src, out_name, dst, in_name) in enumerate(wf.links, start=1):
        out_slot = next(i for i, o in enumerate(outputs[src]) if o["name"] == out_name)
        out_type = outputs[src][out_slot]["type"]
        slots = inputs[dst]
        in_slot = next((i for i, s in enumerate(slots) if s["name"] == in_name), None)
        if in_slot is None:  # a widget fed by a link (e.g. the sampler's caption)
            if in_name not in by_id[dst].widgets:
                raise ValueError(f"{wf.name}: node {dst} ({by_id[dst].type}) has no input {in_name!r}")
            slots.append({"name": in_name, "type": out_type, "widget": {"name": in_name}, "link": None})
            in_slot = len(slots) - 1
        slots[in_slot]["link"] = link_id
        outputs[src][out_slot]["links"].append(link_id)
        links.append([link_id, src, out_slot, dst, in_slot, out_type])
    order = _order(wf)
    nodes = []
    for n in wf.nodes:
        values: list[Any] = []
        for name, value in n.widgets.items():
            values.append(value)
            if name in CONTROL_AFTER_GENERATE.get(n.type, ()):
                values.append("fixed")
        for o in outputs[n.id]:
            o["links"] = o["links"] or None
        node = {
            "id": n.id,
            "type": n.type,
            "pos": [n.pos[0], n.pos[1] + GROUP_TITLE],
            "size": list(n.size),
            "flags": {},
            "order": order[n.id],
            "mode": 0,
            "inputs": inputs[n.id],
            "outputs": outputs[n.id],
            "properties": {"Node name for S&R": n.type},
            "widgets_values": values,
        }
        if n.title:
            node["title"] = n.title
        nodes.append(node)
    groups = [
        {
            "id": i,
            "title": title,
            "bounding": [box[0], box[1], box[2], box[3] + GROUP_TITLE],
            "color": "#3f789e",
            "font_size": 24,
            "flags": {},
        }
        for i, (title, box) in enumerate(wf.groups, start=1)
    ]
    return {
        "last_node_id": max(by_id),
        "last_link_id": len(links),
        "nodes": nodes,
        "links": links,
        "groups": groups,
        "config": {},
        "extra": {"ds": opening_view(nodes, groups)},
        "version": 0.4,
    }


OPENING_WINDOW = (1600, 1000)
"""The browser window a template must open whole in (issue 27: at 1600x1000 the graphs opened partly under the
side bar). The front end 1.32.9 restores a workflow's saved view (``extra.ds``) when it loads it."""
COVERED = {"left": 60, "top": 80}
"""Page pixels the front end draws over the canvas at that size: the side bar (59 px) and the menu and tabs
(78 px), measured by tests/comfyui/browser_check.js, which checks that every node opens inside the rest."""
VIEW_MARGIN = 20
VIEW_SLACK = 0.92
"""The front end may draw a node a little larger than its saved size (a widget's own minimum): keep 8 % spare."""


def opening_view(nodes: list[dict[str, Any]], groups: list[dict[str, Any]]) -> dict[str, Any]:
    """``extra.ds`` (LiteGraph's view: page px = (graph px + offset) x scale) that shows every node, title bar
    included, and every group inside the uncovered part of an :data:`OPENING_WINDOW` window."""
    boxes = [(n["pos"][0], n["pos"][1] - NODE_TITLE, n["size"][0], n["size"][1] + NODE_TITLE) for n in nodes]
    boxes += [tuple(g["bounding"]) for g in groups]
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes)
    width = OPENING_WINDOW[0] - COVERED["left"] - 2 * VIEW_MARGIN
    height = OPENING_WINDOW[1] - COVERED["top"] - 2 * VIEW_MARGIN
    scale = int(100 * VIEW_SLACK * min(width / (x1 - x0), height / (y1 - y0), 1 / VIEW_SLACK)) / 100
    left, top = COVERED["left"] + VIEW_MARGIN, COVERED["top"] + VIEW_MARGIN
    return {"scale": scale, "offset": [round(left / scale - x0, 1), round(top / scale - y0, 1)]}


def api_workflow(wf: Workflow) -> dict[str, Any]:
    prompt: dict[str, Any] = {}
    for n in wf.nodes:
        values = {k: v for k, v in n.widgets.items() if k not in UI_ONLY}
        prompt[str(n.id)] = {"class_type": n.type, "inputs": values, "_meta": {"title": n.title or n.type}}
    for src, out_name, dst, in_name in wf.links:
        slot = [name for name, _ in SOCKETS[next(n.type for n in wf.nodes if n.id == src)][1]].index(out_name)
        prompt[str(dst)]["inputs"][in_name] = [str(src), slot]
    return prompt


def render() -> dict[Path, str]:
    out = {}
    for wf in WORKFLOWS:
        out[REPO / WORKFLOW_DIR / f"{wf.name}.json"] = json.dumps(ui_workflow(wf), indent=1) + "\n"
        out[REPO / WORKFLOW_DIR / "api" / f"{wf.name}.json"] = json.dumps(api_workflow(wf), indent=1) + "\n"
    return out


THUMBNAIL_SUFFIX = ".jpg"
"""ComfyUI's front end (1.32.9, pinned by ComfyUI 0.3.75) shows a pack template's thumbnail from
``/api/workflow_templates/<pack>/<name>.jpg``: it gives every custom-node template ``mediaSubtype: "jpg"``
(comfyui_frontend_package, ``GraphView-*.js``), so only a same-stem ``.jpg`` beside the JSON is found."""
THUMBNAIL_PX = 512


def write_thumbnails(only: list[str] | None = None) -> list[Path]:
    """Open each UI workflow (or those named in ``only``) from the Templates dialog of a real ComfyUI (demo
    models) in headless Chromium, and save the drawn graph, padded to a square (the dialog crops its cards
    square), as the template's thumbnail."""
    import shutil
    import subprocess
    import tempfile

    from PIL import Image

    from sspir_core import host as comfyui

    node, chromium, playwright = shutil.which("node"), comfyui.chromium_binary(), comfyui.playwright_core_dir()
    if node is None or chromium is None or not playwright.is_dir():
        raise SystemExit(
            "error: --thumbnails needs node, Chromium and playwright-core (python scripts/comfyui.py browser)"
        )
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subprocess.run(
            [sys.executable, "-m", "sspir_core.cli", "demo-models", str(work / "models")], check=True, cwd=REPO
        )
        server = comfyui.ComfyServer(work / "comfyui", models_dir=work / "models", comfy_dir=comfyui.ensure())
        server.input_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / "examples" / INPUT_IMAGE, server.input_dir / INPUT_IMAGE)
        with server:
            for wf in [w for w in WORKFLOWS if not only or w.name in only]:
                shot, raw = work / f"{wf.name}-page.png", work / f"{wf.name}-graph.png"
                subprocess.run(
                    [
                        node,
                        str(BROWSER_CHECK),
                        server.url,
                        str(REPO / WORKFLOW_DIR / f"{wf.name}.json"),
                        str(shot),
                        chromium,
                        str(playwright),
                        str(work / f"profile-{wf.name}"),
                        comfyui.PACK_NAME,
                        str(raw),
                    ],
                    check=True,
                    capture_output=True,
                    timeout=300,
                )
                graph = Image.open(raw).convert("RGB")
                side = max(graph.size)
                square = Image.new("RGB", (side, side), graph.getpixel((2, 2)))  # the canvas colour
                square.paste(graph, ((side - graph.width) // 2, (side - graph.height) // 2))
                out = REPO / WORKFLOW_DIR / f"{wf.name}{THUMBNAIL_SUFFIX}"
                square.resize((THUMBNAIL_PX, THUMBNAIL_PX), Image.LANCZOS).save(out, quality=85, optimize=True)
                written.append(out)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the files are up to date")
    parser.add_argument(
        "--thumbnails",
        action="store_true",
        help="redraw each template's .jpg thumbnail in a real ComfyUI and Chromium (minutes)",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="with --thumbnails: only this workflow (repeatable), e.g. sspir_native_one_step",
    )
    args = parser.parse_args(argv)
    if args.thumbnails:
        if args.only and not set(args.only) <= {wf.name for wf in WORKFLOWS}:
            parser.error(f"--only: unknown workflow among {args.only}")
        for path in write_thumbnails(args.only):
            print("wrote: " + str(path.relative_to(REPO)))
        return 0
    stale = []
    for path, text in render().items():
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    for path in stale:
        print(("stale: " if args.check else "wrote: ") + str(path.relative_to(REPO)))
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
