"""Safe reading of weight files: safetensors, or torch pickles with ``weights_only=True``.

Every failure becomes a ``CheckpointError`` that names the file, because a truncated multi-GB download is the
most common reason a checkpoint will not load, and the raw library messages do not say which file it was.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from ..errors import CheckpointError

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Plain ``{name: tensor}``; Lightning-style files nest it under "state_dict"."""
    while isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} does not hold a state dict (found {type(obj).__name__}).")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


class WeightsFile:
    """Lazy view of one weights file: key names and shapes first, tensors only on request.

    safetensors files are memory-mapped, so loading only the UNet of a 4 GB checkpoint reads only the UNet.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"Weights file not found: {self.path}")
        self._pickled: dict[str, torch.Tensor] | None = None
        self._handle = None
        suffix = self.path.suffix.lower()
        try:
            if suffix in SAFETENSORS_SUFFIXES:
                from safetensors import safe_open

                self._handle = safe_open(str(self.path), framework="pt", device="cpu")
                self._keys = list(self._handle.keys())
            elif suffix in PICKLE_SUFFIXES:
                obj = torch.load(self.path, map_location="cpu", weights_only=True, mmap=False)
                self._pickled = _unwrap(obj, self.path)
                self._keys = list(self._pickled)
            else:
                raise CheckpointError(
                    f"{self.path}: unsupported file type {suffix!r}; use .safetensors (preferred) or .ckpt/.pt."
                )
        except CheckpointError:
            raise
        except Exception as exc:  # safetensors/torch raise many unrelated types for a damaged file
            if "Weights only load failed" in str(exc):  # torch's safe unpickler refused an object: not damage
                raise CheckpointError(
                    f"{self.path}: refused by the safe loader (torch.load with weights_only=True): the pickle "
                    "holds Python objects besides tensors, and unpickling them could run code from the file. "
                    "If you trust its source, convert it to .safetensors in a separate session."
                    + "".join(f" ({line.strip()})" for line in str(exc).splitlines() if "Unsupported global" in line)
                ) from exc
            raise CheckpointError(
                f"Could not read {self.path}: {exc}. The file is probably truncated or corrupt "
                f"(an interrupted download?): download or copy it again."
            ) from exc
        self._key_set = set(self._keys)

    def keys(self) -> list[str]:
        return list(self._keys)

    def metadata(self) -> dict[str, str]:
        """The safetensors header metadata (empty for pickles and files without any)."""
        return dict(self._handle.metadata() or {}) if self._handle is not None else {}

    def __contains__(self, key: str) -> bool:
        return key in self._key_set

    def shape(self, key: str) -> tuple[int, ...] | None:
        """Shape of one tensor without reading it, or None if absent."""
        if key not in self:
            return None
        if self._pickled is not None:
            return tuple(self._pickled[key].shape)
        return tuple(self._handle.get_slice(key).get_shape())

    def tensors(self, prefixes: Iterable[str]) -> dict[str, torch.Tensor]:
        """All tensors whose names start with one of ``prefixes``, read now."""
        prefixes = tuple(prefixes)
        wanted = [k for k in self._keys if k.startswith(prefixes)]
        try:
            if self._pickled is not None:
                return {k: self._pickled[k] for k in wanted}
            return {k: self._handle.get_tensor(k) for k in wanted}
        except Exception as exc:
            raise CheckpointError(
                f"Could not read tensors from {self.path}: {exc}. The file is probably truncated or corrupt: "
                "download or copy it again."
            ) from exc


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a weights file (safetensors, or a torch pickle read with ``weights_only=True``)."""
    return WeightsFile(path).tensors(("",))
