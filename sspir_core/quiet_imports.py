"""Import diffusers without importing bitsandbytes, which SSP-IR never uses.

diffusers imports bitsandbytes at module level whenever it is installed (``diffusers/quantizers/bitsandbytes/
utils.py``, reached from ``diffusers.models.modeling_utils``, so from every diffusers model). The eval extra
installs it (pyiqa requires it), and bitsandbytes 0.50 then takes about 3 s to import and logs "Failed to load
CPU gemm_4bit_forward from kernels-community" on CPUs with AVX-512 BF16: an error line in every normal run
that means nothing here.

:func:`install` (called when ``sspir_core`` is imported; it imports nothing heavy) adds an import hook for
that one diffusers module only: while it runs, diffusers' "is bitsandbytes installed" flag reads False, and the
module gets a lazy stand-in for ``bnb`` that imports the real bitsandbytes on first use. So nothing changes for
a program that does use diffusers' bitsandbytes quantisation in the same process (another ComfyUI pack): it
gets the real module when it first touches it. If bitsandbytes is already imported, the hook does nothing.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from typing import Any

BNB_UTILS = "diffusers.quantizers.bitsandbytes.utils"
"""The diffusers module that imports bitsandbytes at module level (diffusers 0.30 to 0.42 at least)."""


class _LazyModule(types.ModuleType):
    """Imports the module of this name on the first attribute access."""

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self.__name__), attr)


class _HideBitsandbytesLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        flags = sys.modules.get("diffusers.utils.import_utils")
        hide = flags is not None and getattr(flags, "_bitsandbytes_available", False) and "bitsandbytes" not in sys.modules
        if hide:
            flags._bitsandbytes_available = False
        try:
            self.loader.exec_module(module)
        finally:
            if hide:
                flags._bitsandbytes_available = True
        if hide and "bnb" not in vars(module):
            module.bnb = _LazyModule("bitsandbytes")


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: types.ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if name != BNB_UTILS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _HideBitsandbytesLoader(spec.loader)
        return spec


def install() -> None:
    """Add the import hook once (idempotent)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
