"""Keep loaded models between runs, keyed by what they were loaded from.

A ComfyUI graph re-runs its nodes on every prompt; reloading gigabytes of weights each time is the
slowest thing a pack can do. Entries are keyed by file identity (path, size, mtime of every weight file),
so a file replaced on disk is loaded again, and by the dtype/device they were loaded for.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, TypeVar

from ..errors import CheckpointError

T = TypeVar("T")

# Files in a model folder that matter for its identity (configs and weights, not READMEs or images).
_IDENTITY_SUFFIXES = (".safetensors", ".sft", ".bin", ".pt", ".pth", ".ckpt", ".json", ".txt", ".model")


def file_signature(path: str | os.PathLike[str]) -> tuple[Any, ...]:
    """``(resolved path, ((relative name, size, mtime_ns), ...))`` of a file, or of every model file in a folder."""
    p = Path(path).expanduser()
    try:
        resolved = p.resolve(strict=True)
    except OSError as exc:
        raise CheckpointError(f"model file or folder not found: {p}") from exc
    if resolved.is_file():
        st = resolved.stat()
        return str(resolved), ((resolved.name, st.st_size, st.st_mtime_ns),)
    entries = []
    for f in sorted(resolved.rglob("*")):
        if f.is_file() and f.suffix.lower() in _IDENTITY_SUFFIXES:
            st = f.stat()
            entries.append((str(f.relative_to(resolved)), st.st_size, st.st_mtime_ns))
    return str(resolved), tuple(entries)


class ModelCache:
    """A small thread-safe LRU of loaded objects; ``max_items`` bounds how many stay in memory."""

    def __init__(self, max_items: int = 3):
        if max_items < 1:
            raise ValueError("max_items must be >= 1")
        self.max_items = max_items
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.RLock()
        self.loads = 0  # how many times a loader actually ran (tests and logs read it)

    def get(self, key: Hashable, load: Callable[[], T]) -> T:
        """The cached object for ``key``, loading it (and evicting the least recently used) when absent."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            value = load()
            self.loads += 1
            self._items[key] = value
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
            return value

    def peek(self, key: Hashable) -> Any:
        """The cached object for ``key``, or None; never loads."""
        with self._lock:
            return self._items.get(key)

    def drop(self, key: Hashable) -> bool:
        with self._lock:
            return self._items.pop(key, None) is not None

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)
