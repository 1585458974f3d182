"""The host's V3 node API (``io``, ``ui``, ``ComfyExtension``) and progress reporting, chosen by probing.

ComfyUI lists its API versions in ``comfy_api.version_list.supported_versions``, each with a ``VERSION`` and a
``STABLE`` flag. In 0.3.75 and 0.33.0 none is stable: ``latest`` is the newest, and ``v0_0_2`` (this pack's
first import) re-exports ``latest``'s ``io`` and ``ui``. So the pack takes the newest stable module the host
lists, else ``comfy_api.latest``, else ``comfy_api.v0_0_2``; each must offer everything the nodes use, or the
next is tried. Never a version number comparison: a host is judged by what it has.

Progress: the V3 API's ``execution.set_progress`` (its documented successor of ``comfy.utils``'s progress
hook) when the chosen module offers it (``ComfyAPISync``), else ``comfy.utils.ProgressBar``.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType
from typing import Any

log = logging.getLogger("sspir")

# What the nodes use of the API (a module that lacks one is skipped).
IO_NAMES = (
    "ComfyNode",
    "Schema",
    "NodeOutput",
    "Custom",
    "Combo",
    "Int",
    "Float",
    "String",
    "Boolean",
    "Image",
    "Model",
    "Clip",
    "ClipVision",
    "Vae",
    "Conditioning",
    "Latent",
    "Sigmas",
)
UI_NAMES = ("PreviewText",)
FALLBACKS = ("comfy_api.latest", "comfy_api.v0_0_2")


def _version_key(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else -1 for p in str(version).split("."))


def candidates() -> list[str]:
    """API module names to try, best first: the stable ones the host lists (newest first), then
    :data:`FALLBACKS`."""
    names: list[str] = []
    try:
        from comfy_api.version_list import supported_versions
    except Exception:  # noqa: BLE001 (a host without the list still has the fallbacks)
        supported_versions = []
    stable = [v for v in supported_versions if getattr(v, "STABLE", False) is True]
    stable.sort(key=lambda v: _version_key(getattr(v, "VERSION", "")), reverse=True)
    names += [v.__module__ for v in stable]
    return list(dict.fromkeys(names + list(FALLBACKS)))


def usable(module: ModuleType) -> bool:
    io_, ui_ = getattr(module, "io", None), getattr(module, "ui", None)
    return (
        io_ is not None
        and ui_ is not None
        and hasattr(module, "ComfyExtension")
        and all(hasattr(io_, n) for n in IO_NAMES)
        and all(hasattr(ui_, n) for n in UI_NAMES)
    )


def choose() -> ModuleType:
    """The first usable module of :func:`candidates`; an ImportError naming them when none is."""
    tried = []
    for name in candidates():
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            tried.append(f"{name} ({exc})")
            continue
        if usable(module):
            return module
        tried.append(f"{name} (lacks some of io.{', io.'.join(IO_NAMES)}, ui.{', ui.'.join(UI_NAMES)})")
    raise ImportError("SSP-IR needs ComfyUI's V3 node API (ComfyUI 0.3.75 or newer); tried " + "; ".join(tried))


API = choose()
io = API.io
ui = API.ui
ComfyExtension = API.ComfyExtension


class _SetProgress:
    """``comfy.utils.ProgressBar``'s ``update_absolute`` on the V3 API's ``execution.set_progress``."""

    def __init__(self, execution: Any) -> None:
        self._execution = execution
        self._fallback: Any = None

    def update_absolute(self, value: int, total: int | None = None, preview: Any = None) -> None:
        if self._fallback is None:
            image = preview[1] if isinstance(preview, tuple) else preview  # ProgressBar's (format, image, size)
            try:
                self._execution.set_progress(value=value, max_value=max(total or 1, 1), preview_image=image)
                return
            except ValueError:  # called where the host knows no executing node (set_progress needs one)
                from comfy.utils import ProgressBar

                self._fallback = ProgressBar(1)
        self._fallback.update_absolute(value, total, preview)


_SYNC: list[Any] = []  # the one ComfyAPISync instance of this process


def progress_bar() -> Any | None:
    """Something with ``update_absolute(value, total, preview)``: the V3 API's progress where the chosen module
    offers it, else ``comfy.utils.ProgressBar``; None outside ComfyUI."""
    sync_class = getattr(API, "ComfyAPISync", None)
    if sync_class is not None:
        if not _SYNC:
            _SYNC.append(sync_class())
        execution = getattr(_SYNC[0], "execution", None)
        if callable(getattr(execution, "set_progress", None)):
            return _SetProgress(execution)
    try:
        from comfy.utils import ProgressBar
    except ImportError:
        return None
    return ProgressBar(1)
