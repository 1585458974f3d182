"""A small stand-in for the parts of ComfyUI the nodes import, so node ``execute`` runs without a server.

It mirrors the V3 API surface the pack uses (``comfy_api.v0_0_2.io``/``ui``, ``folder_paths``,
``comfy.model_management``, ``comfy.utils.ProgressBar``) and records what the nodes ask of it (progress updates,
interrupt checks, unloads). The real server tests (scripts/run_workflow.py, tests/comfyui/) check the same nodes
against the real ComfyUI.
"""

from __future__ import annotations

import os
import sys
import types
from dataclasses import dataclass, field
from typing import Any


class _Input:
    def __init__(self, id: str, *args: Any, **kw: Any):
        if args:  # Combo.Input(id, options)
            kw["options"] = args[0]
        self.id = id
        self.optional = kw.pop("optional", False)
        self.tooltip = kw.pop("tooltip", None)
        self.kw = kw


class _Output:
    def __init__(self, id: str | None = None, display_name: str | None = None, tooltip: str | None = None,
                 is_output_list: bool = False, **kw: Any):
        self.id, self.display_name, self.tooltip, self.is_output_list = id, display_name, tooltip, is_output_list


def _type(io_type: str, widget: bool) -> type:
    input_cls = type(f"{io_type}Input", (_Input,), {"io_type": io_type, "widget": widget})
    output_cls = type(f"{io_type}Output", (_Output,), {"io_type": io_type})
    return type(io_type, (), {"io_type": io_type, "Input": input_cls, "Output": output_cls})


@dataclass
class Schema:
    node_id: str
    display_name: str | None = None
    category: str = "sd"
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    hidden: list | None = None
    description: str = ""
    is_input_list: bool = False
    is_output_node: bool = False


class NodeOutput:
    def __init__(self, *args: Any, ui: Any = None, **_: Any):
        self.args, self.ui = args, ui

    def __getitem__(self, i: int) -> Any:
        return self.args[i]


class ComfyNode:
    pass


class PreviewText:
    def __init__(self, value: str, **_: Any):
        self.value = value

    def as_dict(self) -> dict:
        return {"text": (self.value,)}


class InterruptProcessingException(Exception):
    pass


class Recorder:
    """What the nodes did to the fake host."""

    def __init__(self) -> None:
        self.progress: list[tuple[int, int, Any]] = []
        self.interrupt_checks = 0
        self.interrupt_after: int | None = None  # raise at this check
        self.unloads = 0
        self.soft_empties = 0


def install(monkeypatch, models_dir: str, device: str = "cpu", vram_state: str = "NORMAL_VRAM",
            existing_folders: dict[str, tuple[list[str], set[str]]] | None = None) -> Recorder:
    """Put fake ComfyUI modules in ``sys.modules`` (undone by ``monkeypatch``); returns the recorder."""
    import enum

    import torch

    rec = Recorder()
    io = types.ModuleType("comfy_api.v0_0_2.io")
    io.Schema, io.NodeOutput, io.ComfyNode = Schema, NodeOutput, ComfyNode
    io.Custom = lambda name: _type(name, widget=False)
    io.Image, io.Mask = _type("IMAGE", False), _type("MASK", False)
    for name, io_type in (("Model", "MODEL"), ("Clip", "CLIP"), ("ClipVision", "CLIP_VISION"), ("Vae", "VAE"),
                          ("Conditioning", "CONDITIONING"), ("Latent", "LATENT"), ("Sigmas", "SIGMAS")):
        setattr(io, name, _type(io_type, widget=False))
    for name, io_type in (("String", "STRING"), ("Int", "INT"), ("Float", "FLOAT"), ("Boolean", "BOOLEAN"),
                          ("Combo", "COMBO")):
        setattr(io, name, _type(io_type, widget=True))
    ui = types.ModuleType("comfy_api.v0_0_2.ui")
    ui.PreviewText = PreviewText
    api = types.ModuleType("comfy_api.v0_0_2")
    api.io, api.ui, api.ComfyExtension = io, ui, type("ComfyExtension", (), {})

    fp = types.ModuleType("folder_paths")
    fp.models_dir = models_dir
    fp.folder_names_and_paths = {
        "checkpoints": ([os.path.join(models_dir, "checkpoints")], {".safetensors", ".ckpt"}),
        "clip_vision": ([os.path.join(models_dir, "clip_vision")], {".safetensors"}),
        "diffusers": ([os.path.join(models_dir, "diffusers")], ["folder"]),
        **(existing_folders or {}),
    }

    def get_folder_paths(name: str) -> list[str] | None:
        entry = fp.folder_names_and_paths.get(name)
        return None if entry is None else entry[0]

    def get_filename_list(name: str) -> list[str]:
        paths, exts = fp.folder_names_and_paths[name]
        out = []
        for root in paths:
            for dirpath, _, files in os.walk(root):
                out += [os.path.relpath(os.path.join(dirpath, f), root) for f in files
                        if os.path.splitext(f)[1].lower() in exts]
        return sorted(out)

    def get_full_path_or_raise(name: str, filename: str) -> str:
        for root in fp.folder_names_and_paths[name][0]:
            path = os.path.join(root, filename)
            if os.path.isfile(path):
                return path
        raise FileNotFoundError(f"Model in folder '{name}' with filename '{filename}' not found.")

    fp.get_folder_paths, fp.get_filename_list, fp.get_full_path_or_raise = (
        get_folder_paths, get_filename_list, get_full_path_or_raise)

    mm = types.ModuleType("comfy.model_management")
    mm.VRAMState = enum.Enum("VRAMState", "DISABLED NO_VRAM LOW_VRAM NORMAL_VRAM HIGH_VRAM SHARED")
    mm.vram_state = mm.VRAMState[vram_state]
    mm.get_torch_device = lambda: torch.device(device)
    mm.InterruptProcessingException = InterruptProcessingException

    def unload_all_models() -> None:
        rec.unloads += 1

    def soft_empty_cache(force: bool = False) -> None:
        rec.soft_empties += 1

    def throw_exception_if_processing_interrupted() -> None:
        rec.interrupt_checks += 1
        if rec.interrupt_after is not None and rec.interrupt_checks >= rec.interrupt_after:
            raise InterruptProcessingException()

    mm.unload_all_models, mm.soft_empty_cache = unload_all_models, soft_empty_cache
    mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted

    utils = types.ModuleType("comfy.utils")

    class ProgressBar:
        def __init__(self, total: int, node_id: Any = None):
            self.total = total

        def update_absolute(self, value: int, total: int | None = None, preview: Any = None) -> None:
            rec.progress.append((value, total, preview))

    utils.ProgressBar = ProgressBar
    comfy = types.ModuleType("comfy")
    comfy.model_management, comfy.utils = mm, utils

    for name, module in (("comfy_api", types.ModuleType("comfy_api")), ("comfy_api.v0_0_2", api),
                         ("folder_paths", fp), ("comfy", comfy), ("comfy.model_management", mm),
                         ("comfy.utils", utils)):
        monkeypatch.setitem(sys.modules, name, module)
    for name in [m for m in sys.modules if m == "nodes" or m.startswith("nodes.")]:
        monkeypatch.delitem(sys.modules, name)  # the node modules bind the fake io at import
    return rec
