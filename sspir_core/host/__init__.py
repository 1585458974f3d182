"""A real ComfyUI for this pack, run as a child process: fetched per version, prepared, started, driven over HTTP.

The tests in ``tests/comfyui``, ``sspir bench --parts native`` and ``scripts/run_workflow.py`` share this
harness. It never imports ComfyUI (so it lives in sspir_core); ``python -m sspir_core.host`` (or
``scripts/comfyui.py``) is its command line. The versions it runs are :data:`VERSIONS`.
"""

from __future__ import annotations

from .install import (
    CHROMIUM_CANDIDATES,
    COMFYUI_VERSION,
    DEFAULT_VERSION,
    TARBALL_ENV,
    TARBALL_VERSION,
    VERSIONS,
    ComfyUIError,
    ComfyUIUnavailable,
    Host,
    cache_root,
    cached_dir,
    chromium_binary,
    comfyui_dir,
    comfyui_python,
    ensure,
    fetch,
    install_playwright_core,
    install_requirements,
    is_ready,
    missing_requirements,
    playwright_core_dir,
    prepare,
    read_version,
    requirements,
    tarball_path,
    user_comfyui_dir,
    venv_dir,
)
from .server import (
    MODEL_FOLDERS,
    PACK_DIR,
    PACK_NAME,
    ComfyServer,
    free_port,
    prompt_error,
    write_extra_model_paths,
)

__all__ = [
    "CHROMIUM_CANDIDATES",
    "COMFYUI_VERSION",
    "DEFAULT_VERSION",
    "MODEL_FOLDERS",
    "PACK_DIR",
    "PACK_NAME",
    "TARBALL_ENV",
    "TARBALL_VERSION",
    "VERSIONS",
    "ComfyServer",
    "ComfyUIError",
    "ComfyUIUnavailable",
    "Host",
    "cache_root",
    "cached_dir",
    "chromium_binary",
    "comfyui_dir",
    "comfyui_python",
    "ensure",
    "fetch",
    "free_port",
    "install_playwright_core",
    "install_requirements",
    "is_ready",
    "missing_requirements",
    "playwright_core_dir",
    "prepare",
    "prompt_error",
    "read_version",
    "requirements",
    "tarball_path",
    "user_comfyui_dir",
    "venv_dir",
    "write_extra_model_paths",
]
