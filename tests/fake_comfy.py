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
    def __init__(
        self,
        id: str | None = None,
        display_name: str | None = None,
        tooltip: str | None = None,
        is_output_list: bool = False,
        **kw: Any,
    ):
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


API_SHAPES = ("v0_0_2", "0.33.0", "stable")
"""The V3 API layouts the pack probes: ``v0_0_2`` alone (what the pack first imported), ComfyUI 0.3.75/0.33.0's
(``version_list`` with ``latest`` and ``v0_0_2``, none stable, ``ComfyAPISync.execution.set_progress``), and a
host that lists a stable ``comfy_api.v1``."""


def install(
    monkeypatch,
    models_dir: str,
    device: str = "cpu",
    vram_state: str = "NORMAL_VRAM",
    existing_folders: dict[str, tuple[list[str], set[str]]] | None = None,
    api_shape: str = "v0_0_2",
) -> Recorder:
    """Put fake ComfyUI modules in ``sys.modules`` (undone by ``monkeypatch``); returns the recorder.

    ``api_shape`` (one of :data:`API_SHAPES`): which V3 API modules exist. Progress sent through the V3 API's
    ``set_progress`` is recorded in ``rec.progress`` as ``("set_progress", value, max_value, image)``."""
    import enum

    import torch

    rec = Recorder()
    io = types.ModuleType("comfy_api.v0_0_2.io")
    io.Schema, io.NodeOutput, io.ComfyNode = Schema, NodeOutput, ComfyNode
    io.Custom = lambda name: _type(name, widget=False)
    io.Image, io.Mask = _type("IMAGE", False), _type("MASK", False)
    for name, io_type in (
        ("Model", "MODEL"),
        ("Clip", "CLIP"),
        ("ClipVision", "CLIP_VISION"),
        ("Vae", "VAE"),
        ("Conditioning", "CONDITIONING"),
        ("Latent", "LATENT"),
        ("Sigmas", "SIGMAS"),
    ):
        setattr(io, name, _type(io_type, widget=False))
    for name, io_type in (
        ("String", "STRING"),
        ("Int", "INT"),
        ("Float", "FLOAT"),
        ("Boolean", "BOOLEAN"),
        ("Combo", "COMBO"),
    ):
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
                out += [
                    os.path.relpath(os.path.join(dirpath, f), root)
                    for f in files
                    if os.path.splitext(f)[1].lower() in exts
                ]
        return sorted(out)

    def get_full_path_or_raise(name: str, filename: str) -> str:
        for root in fp.folder_names_and_paths[name][0]:
            path = os.path.join(root, filename)
            if os.path.isfile(path):
                return path
        raise FileNotFoundError(f"Model in folder '{name}' with filename '{filename}' not found.")

    fp.get_folder_paths, fp.get_filename_list, fp.get_full_path_or_raise = (
        get_folder_paths,
        get_filename_list,
        get_full_path_or_raise,
    )

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

    api_modules = {"comfy_api": types.ModuleType("comfy_api"), "comfy_api.v0_0_2": api}
    if api_shape not in API_SHAPES:
        raise ValueError(f"api_shape must be one of {API_SHAPES}")
    if api_shape != "v0_0_2":

        class Execution:
            def set_progress(self, value, max_value, node_id=None, preview_image=None, ignore_size_limit=False):
                rec.progress.append(("set_progress", value, max_value, preview_image))

        class ComfyAPISync:
            def __init__(self) -> None:
                self.execution = Execution()

        versions = []
        for name, version, stable in (
            ("latest", "latest", False),
            ("v0_0_2", "0.0.2", False),
            ("v1", "1.0", True),
            ("v0_9", "0.9", True),
        ):
            if stable and api_shape != "stable":
                continue
            module = api if name == "v0_0_2" else types.ModuleType(f"comfy_api.{name}")
            module.io, module.ui, module.ComfyExtension = io, ui, api.ComfyExtension
            module.ComfyAPISync = ComfyAPISync
            api_modules[f"comfy_api.{name}"] = module
            versions.append(
                type(f"ComfyAPI_{name}", (), {"VERSION": version, "STABLE": stable, "__module__": f"comfy_api.{name}"})
            )
        version_list = types.ModuleType("comfy_api.version_list")
        version_list.supported_versions = versions
        api_modules["comfy_api.version_list"] = version_list
    for name, module in (
        *api_modules.items(),
        ("folder_paths", fp),
        ("comfy", comfy),
        ("comfy.model_management", mm),
        ("comfy.utils", utils),
    ):
        monkeypatch.setitem(sys.modules, name, module)
    for name in [m for m in sys.modules if m == "nodes" or m.startswith("nodes.")]:
        monkeypatch.delitem(sys.modules, name)  # the node modules bind the fake io at import
    return rec


# ------------------------------------------------------------------------------------- model patchers

PATCHER_SHAPES = ("0.3.75", "0.33.0")
"""The two shapes of ComfyUI's patcher API the pack probes for (read from each version's comfy/model_patcher.py,
comfy/model_management.py and comfy/patcher_extension.py)."""


class FakeModelPatcher:
    """ComfyUI's ``ModelPatcher`` as far as the pack's loader uses it: model, devices, callbacks, clone."""

    def __init__(
        self, model: Any, load_device: Any, offload_device: Any, size: int = 0, weight_inplace_update: bool = False
    ):
        self.model, self.load_device, self.offload_device, self.size = model, load_device, offload_device, size
        self.callbacks: dict[str, dict[Any, list]] = {}

    def is_dynamic(self) -> bool:
        return False

    def add_callback(self, call_type: str, callback: Any) -> None:
        self.callbacks.setdefault(call_type, {}).setdefault(None, []).append(callback)

    def get_all_callbacks(self, call_type: str) -> list:
        return [c for group in self.callbacks.get(call_type, {}).values() for c in group]

    def clone(self, model_override: Any = None) -> FakeModelPatcher:
        n = self.__class__(
            self.model if model_override is None else model_override, self.load_device, self.offload_device, self.size
        )
        n.callbacks = {k: {k1: list(c1) for k1, c1 in c.items()} for k, c in self.callbacks.items()}
        if hasattr(self, "cached_patcher_init"):
            n.cached_patcher_init = self.cached_patcher_init
        return n


class FakeModelPatcher033(FakeModelPatcher):
    """0.33.0's additions: ``cached_patcher_init`` (None unless a loader sets it) and ``deepclone_multigpu``,
    which reloads the model through that factory, clones with it, moves the load device and runs the
    ``ON_DEEPCLONE_MULTIGPU`` callbacks (in that order, as 0.33.0 does)."""

    def __init__(self, *args: Any, **kw: Any):
        super().__init__(*args, **kw)
        self.cached_patcher_init = None

    def deepclone_multigpu(self, new_load_device: Any = None, models_cache: Any = None) -> FakeModelPatcher033:
        if self.cached_patcher_init is None:
            raise RuntimeError(
                f"Cannot create multigpu deepclone of {type(self.model).__name__}: "
                "cached_patcher_init is not initialized"
            )
        fresh = self.cached_patcher_init[0](*self.cached_patcher_init[1])
        n = self.clone(model_override=fresh.model)
        if new_load_device is not None:
            n.load_device = new_load_device
        for callback in self.get_all_callbacks("on_deepclone_multigpu"):
            callback(self, n)
        return n


class FakeDynamicPatcher(FakeModelPatcher033):
    """What ``CoreModelPatcher`` is when ComfyUI 0.33.0 runs with dynamic VRAM (``ModelPatcherDynamic``)."""

    def is_dynamic(self) -> bool:
        return True


def install_patcher_host(monkeypatch, shape: str, rec: Recorder | None = None) -> None:
    """Add to a fake host (:func:`install`) what ``nodes/native_patch.py`` imports, in one of
    :data:`PATCHER_SHAPES`: 0.3.75 has only ``ModelPatcher``; 0.33.0 adds ``CoreModelPatcher`` (here the dynamic
    one), ``archive_model_dtypes``, ``cached_patcher_init`` and ``CallbacksMP.ON_DEEPCLONE_MULTIGPU``."""
    import torch
    from torch import nn

    if shape not in PATCHER_SHAPES:
        raise ValueError(f"shape must be one of {PATCHER_SHAPES}")
    new = shape != "0.3.75"
    mm = sys.modules["comfy.model_management"]
    mm.unet_offload_device = lambda: torch.device("cpu")
    mm.intermediate_device = lambda: torch.device("cpu")
    if new:

        def archive_model_dtypes(model: Any) -> None:  # as 0.33.0: <param>_comfy_model_dtype on each module
            for _, module in model.named_modules():
                for name, param in module.named_parameters(recurse=False):
                    setattr(module, f"{name}_comfy_model_dtype", param.dtype)
                for name, buf in module.named_buffers(recurse=False):
                    setattr(module, f"{name}_comfy_model_dtype", buf.dtype)

        mm.archive_model_dtypes = archive_model_dtypes
    elif hasattr(mm, "archive_model_dtypes"):
        monkeypatch.delattr(mm, "archive_model_dtypes")

    mp = types.ModuleType("comfy.model_patcher")
    mp.ModelPatcher = FakeModelPatcher033 if new else FakeModelPatcher
    if new:
        mp.CoreModelPatcher = FakeDynamicPatcher

    ext = types.ModuleType("comfy.patcher_extension")
    ext.WrappersMP = type(
        "WrappersMP",
        (),
        {"DIFFUSION_MODEL": "diffusion_model", "PREDICT_NOISE": "predict_noise", "SAMPLER_SAMPLE": "sampler_sample"},
    )
    if new:
        ext.CallbacksMP = type(
            "CallbacksMP", (), {"ON_CLONE": "on_clone", "ON_DEEPCLONE_MULTIGPU": "on_deepclone_multigpu"}
        )

    ops = types.ModuleType("comfy.ops")
    cast = type("CastWeightBiasOp", (), {"comfy_cast_weights": False})
    ops.disable_weight_init = type(
        "disable_weight_init",
        (),
        {n.__name__: type(n.__name__, (n, cast), {}) for n in (nn.Linear, nn.Conv2d, nn.GroupNorm, nn.LayerNorm)},
    )

    attention = types.ModuleType("comfy.ldm.modules.attention")
    attention.SpatialTransformer = type("SpatialTransformer", (nn.Module,), {})
    openai = types.ModuleType("comfy.ldm.modules.diffusionmodules.openaimodel")
    openai.TimestepEmbedSequential = type("TimestepEmbedSequential", (nn.Sequential,), {})
    openai.Upsample = type("Upsample", (nn.Module,), {})

    comfy = sys.modules["comfy"]
    comfy.model_patcher, comfy.patcher_extension, comfy.ops = mp, ext, ops
    for name, module in (
        ("comfy.model_patcher", mp),
        ("comfy.patcher_extension", ext),
        ("comfy.ops", ops),
        ("comfy.ldm", types.ModuleType("comfy.ldm")),
        ("comfy.ldm.modules", types.ModuleType("comfy.ldm.modules")),
        ("comfy.ldm.modules.attention", attention),
        ("comfy.ldm.modules.diffusionmodules", types.ModuleType("comfy.ldm.modules.diffusionmodules")),
        ("comfy.ldm.modules.diffusionmodules.openaimodel", openai),
    ):
        monkeypatch.setitem(sys.modules, name, module)
