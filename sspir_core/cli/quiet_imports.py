"""Import diffusers (and peft) without importing bitsandbytes, which SSP-IR never uses.

When bitsandbytes is installed, diffusers imports it at module level (``diffusers/quantizers/bitsandbytes/
utils.py``, reached from every diffusers model) and so does peft (``peft/helpers.py`` and its tuners, reached
from diffusers' UNet through ``diffusers.hooks`` when peft is installed). The eval extra installs bitsandbytes
(pyiqa requires it); bitsandbytes 0.50 then takes about 3 s to import and logs "Failed to load CPU
gemm_4bit_forward from kernels-community" on CPUs with AVX-512 BF16: an error line in every normal run that
means nothing here.

:func:`install` (called by the ``sspir`` executable, which owns its process; the library and the ComfyUI
nodes never call it, since a host process's imports are not ours to change) adds an import hook for
those modules only: while one of them runs its module code, ``import bitsandbytes`` finds a lazy stand-in that
imports the real bitsandbytes on its first attribute access. So a program that does use bitsandbytes through
diffusers or peft in the same process (another ComfyUI pack) gets the real module as soon as it touches it;
only the import at start-up is skipped. If bitsandbytes is already imported, the hook does nothing.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from typing import Any

BNB = "bitsandbytes"
IMPORTERS = ("diffusers.quantizers.bitsandbytes.utils", "peft")
"""Modules whose module code imports bitsandbytes without needing it (diffusers 0.30-0.42, peft 0.13-0.21)."""


class _LazyModule(types.ModuleType):
    """Stands in for a module; the first attribute access imports the real one (and takes the stand-in out of
    ``sys.modules``, so nested imports of the package find the real thing)."""

    def __getattr__(self, attr: str) -> Any:
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), attr)


class _DeferBitsandbytesLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        stand_in = None
        if BNB not in sys.modules:
            stand_in = sys.modules[BNB] = _LazyModule(BNB)
            # what find_spec() and inspect.getmodule() read from every entry of sys.modules (no __path__: a
            # submodule import must bring the real package in)
            stand_in.__spec__ = importlib.machinery.PathFinder.find_spec(BNB)
            stand_in.__file__ = getattr(stand_in.__spec__, "origin", None)
        try:
            self.loader.exec_module(module)
        finally:
            if stand_in is not None and sys.modules.get(BNB) is stand_in:
                del sys.modules[BNB]  # the stand-in stays bound where it was imported, nowhere else


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, name: str, path: Any, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name not in IMPORTERS or BNB in sys.modules:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _DeferBitsandbytesLoader(spec.loader)
        return spec


def install() -> None:
    """Add the import hook once (idempotent)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
