"""Disk cache of captions, so re-running a graph or a dataset does not caption the same image twice.

Key = image content (mode, size, pixels) + the captioner's identity (backend, model fingerprint, prompt,
decoding options, seed). Device and dtype are not part of the key: a caption is treated as the same
whichever card produced it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..files import write_text_atomic

CACHE_ENV_VAR = "SSPIR_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$SSPIR_CACHE_DIR/captions``, else ``$XDG_CACHE_HOME/sspir/captions``, else the platform cache dir."""
    explicit = os.environ.get(CACHE_ENV_VAR)
    if explicit:
        return Path(explicit).expanduser() / "captions"
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "sspir" / "captions"
    if os.name == "nt" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "sspir" / "cache" / "captions"
    return Path.home() / ".cache" / "sspir" / "captions"


def identity_digest(identity: dict[str, Any]) -> str:
    """Stable hash of a captioner identity (JSON with sorted keys)."""
    blob = json.dumps(identity, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class CaptionCache:
    """One small JSON file per (image, captioner identity), written atomically."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser()
        self.hits = 0
        self.misses = 0

    def key(self, identity_hash: str, image_hash: str) -> str:
        return hashlib.sha256(f"{identity_hash}:{image_hash}".encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        try:
            with open(self._path(key), encoding="utf-8") as f:
                caption = json.load(f).get("caption")
        except (OSError, ValueError, AttributeError):
            caption = None
        if isinstance(caption, str):
            self.hits += 1
            return caption
        self.misses += 1
        return None

    def put(self, key: str, caption: str, identity: dict[str, Any] | None = None) -> None:
        """Store a caption; a cache that cannot be written is skipped, never fatal."""
        try:
            write_text_atomic(self._path(key), json.dumps({"caption": caption, "identity": identity}, default=str))
        except OSError:
            pass
