"""What the nodes need from ComfyUI itself: model folders, device and VRAM state, memory, progress, Cancel.

Every ComfyUI module is imported inside a function and its absence tolerated, so the pack always imports and
its nodes also run outside a server (tests, scripts). Decisions on the values read here live in
``nodes.support``.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

import torch

from sspir_core.errors import InputError
from sspir_core.restore.work import Run

from .support import (
    list_model_folders,
    list_sspir_choices,
    merge_folder_entry,
    resolve_in_roots,
)

log = logging.getLogger("sspir")

# Folders this pack adds to ComfyUI's model folder list, with the file extensions they list.
PACK_FOLDERS: dict[str, set[str]] = {"sspir": {".safetensors", ".sft"}, "LLM": {"folder"}}


def _folder_paths() -> Any | None:
    try:
        import folder_paths
    except ImportError:
        return None
    return folder_paths


def _model_management() -> Any | None:
    try:
        import comfy.model_management as mm
    except ImportError:
        return None
    return mm


def register_model_folders() -> None:
    """Add ``models/sspir`` and ``models/LLM``, keeping folders that extra_model_paths.yaml already declared."""
    fp = _folder_paths()
    if fp is None:
        return
    for name, exts in PACK_FOLDERS.items():
        existing = fp.folder_names_and_paths.get(name)
        fp.folder_names_and_paths[name] = merge_folder_entry(existing, os.path.join(fp.models_dir, name), exts)


def roots(name: str) -> list[str]:
    fp = _folder_paths()
    if fp is None:
        return []
    return list(fp.get_folder_paths(name) or [])


def file_choices(name: str) -> list[str]:
    """File names ComfyUI lists for a core folder (``checkpoints``, ``clip_vision``)."""
    fp = _folder_paths()
    if fp is None:
        return []
    try:
        return list(fp.get_filename_list(name))
    except KeyError:
        return []


def base_model_choices() -> list[str]:
    """Single-file checkpoints, then diffusers folders (sub-folders holding model_index.json)."""
    return file_choices("checkpoints") + list_model_folders(roots("diffusers"), "model_index.json")


def sspir_choices() -> list[str]:
    return list_sspir_choices(roots("sspir"))


def llm_choices() -> list[str]:
    return list_model_folders(roots("LLM"), "config.json")


def resolve_file(folder: str, name: str, what: str) -> str:
    """Full path of a file picked from a core folder's list. ComfyUI 0.3.75 does not reject a combo value
    outside its options, so the name is checked here."""
    fp = _folder_paths()
    if fp is None:
        raise InputError(f"{what}: ComfyUI's folder_paths is not available")
    try:
        return fp.get_full_path_or_raise(folder, name)
    except FileNotFoundError as exc:
        shown = ", ".join(fp.get_folder_paths(folder) or []) or "(none)"
        raise InputError(
            f"{what}: {name!r} is not in the {folder} folders ({shown}); put the file there and "
            "press R (refresh) in ComfyUI, or pick another"
        ) from exc


def resolve_base_model(name: str) -> str:
    """A single file from ``checkpoints``, else a diffusers folder from ``diffusers``."""
    if name in file_choices("checkpoints"):
        return resolve_file("checkpoints", name, "base_model")
    if name in list_model_folders(roots("diffusers"), "model_index.json"):
        return str(resolve_in_roots(roots("diffusers"), name, "base_model", "diffusers"))
    shown = ", ".join(roots("checkpoints") + roots("diffusers")) or "(none)"
    raise InputError(
        f"base_model: {name!r} is not in the checkpoints folders nor a diffusers folder ({shown}); "
        "put the SD1.5/SD2.1-base file there and press R (refresh) in ComfyUI, or pick another"
    )


def resolve_in(folder: str, name: str, what: str) -> str:
    return str(resolve_in_roots(roots(folder), name, what, folder))


# ------------------------------------------------------------------------------------- validation


def widget_errors(errors: list[dict], problems: dict[str, str]) -> list[dict]:
    """A node's validation errors with the custom ones replaced by one per problem, on the widget it is about."""
    if not problems:
        return errors
    kept = [e for e in errors if e.get("type") != "custom_validation_failed"]
    return kept + [
        {
            "type": "custom_validation_failed",
            "message": "Custom validation failed for node",
            "details": problem,
            "extra_info": {"input_name": name},
        }
        for name, problem in problems.items()
    ]


def _widget_values(inputs: dict, names: Iterable[str]) -> dict[str, Any]:
    """The prompt's values of ``names``; a link (``[node_id, slot]``) is unknown while validating: None."""
    return {n: None if isinstance(inputs.get(n), list) else inputs.get(n) for n in names}


def attach_errors_to_widgets(node_classes: Iterable[type]) -> bool:
    """Make ComfyUI report each of these nodes' widget problems once, on its own widget.

    ComfyUI 0.3.75 attaches the text a ``validate_inputs`` returns to every input that function takes, so one
    bad ``tile`` was reported five times and the front end outlined steps, cfg, tile, tile_overlap and
    vae_tile. For the classes with a ``widget_problems`` classmethod (``{widget: problem}``), the result of
    ComfyUI's ``execution.validate_inputs`` is rewritten: its custom-validation errors are replaced by one per
    problem. Other nodes' results pass through untouched; without ComfyUI (or with an ``execution`` module
    that differs) nothing changes and the nodes still refuse bad values. Returns whether it is in place.
    """
    try:
        import execution
    except ImportError:
        return False
    original = getattr(execution, "validate_inputs", None)
    if original is None or not inspect.iscoroutinefunction(original):
        return False
    checked = {cls.__name__: cls for cls in node_classes if hasattr(cls, "widget_problems")}
    known = getattr(original, "sspir_classes", None)
    if known is not None:  # already wrapped (the pack's node list is built more than once)
        known.update(checked)
        return True

    async def validate_inputs(prompt_id: Any, prompt: dict, item: Any, validated: dict, *args: Any, **kw: Any):
        result = await original(prompt_id, prompt, item, validated, *args, **kw)
        node = prompt.get(item) if isinstance(prompt, dict) else None
        cls = validate_inputs.sspir_classes.get(node.get("class_type")) if isinstance(node, dict) else None
        if cls is None or not (isinstance(result, tuple) and len(result) == 3) or result[0]:
            return result
        names = inspect.signature(cls.widget_problems).parameters
        try:
            problems = cls.widget_problems(**_widget_values(node.get("inputs") or {}, names))
        except Exception:  # noqa: BLE001 (never hide ComfyUI's own result behind a bug here)
            log.exception("SSP-IR: could not sort the validation errors of node %s", item)
            return result
        result = (result[0], widget_errors(result[1], problems), result[2])
        validated[item] = result
        return result

    validate_inputs.sspir_classes = checked
    validate_inputs.__wrapped__ = original
    execution.validate_inputs = validate_inputs
    return True


# ------------------------------------------------------------------------------------- device and memory


def device() -> torch.device | None:
    """ComfyUI's device (``--cpu`` makes it the CPU), or None outside ComfyUI."""
    mm = _model_management()
    return None if mm is None else mm.get_torch_device()


def low_vram() -> bool:
    """True when ComfyUI runs in a low-VRAM mode (``--lowvram``, ``--novram``, or chosen for a small GPU)."""
    mm = _model_management()
    if mm is None:
        return False
    return mm.vram_state in (mm.VRAMState.LOW_VRAM, mm.VRAMState.NO_VRAM)


def free_memory_for(target: torch.device) -> None:
    """Unload ComfyUI's own models before ours need the accelerator's memory."""
    mm = _model_management()
    if mm is None or target.type == "cpu":
        return
    mm.unload_all_models()
    mm.soft_empty_cache()


def check_interrupted() -> None:
    """Raise ComfyUI's interrupt exception when the user pressed Cancel."""
    mm = _model_management()
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()


def _progress_bar() -> Any | None:
    """The host's progress reporting (see ``nodes.api.progress_bar``); None outside ComfyUI."""
    try:
        from .api import progress_bar
    except ImportError:
        return None
    return progress_bar()


def start_run(rate_key: object = None) -> tuple[Run, Callable[[int, int, torch.Tensor], None]]:
    """A run for one node: ComfyUI's Cancel checked at every tile and in every model block, the progress bar in
    units of work (tiles of every stage, total announced before they start), and a per-step callback that
    adds a live latent preview."""
    from sspir_core.restore.pipeline import latent_preview

    bar = _progress_bar()

    def on_progress(done: int, total: int) -> None:
        if bar is not None:
            bar.update_absolute(done, max(total, 1))

    run = Run(check=check_interrupted, on_progress=on_progress, rate_key=rate_key)

    def callback(step: int, steps: int, latents: torch.Tensor) -> None:
        check_interrupted()
        if bar is not None:
            preview = ("JPEG", preview_image(latent_preview(latents[:1])), 256)
            bar.update_absolute(run.done, max(run.total, 1), preview)

    return run, callback


def preview_image(rgb: torch.Tensor):
    """[1,3,h,w] in [0,1] -> a PIL image for ComfyUI's live preview."""
    from PIL import Image

    arr = (rgb[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return Image.fromarray(arr)
