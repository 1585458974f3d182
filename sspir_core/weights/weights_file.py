"""Safe reading of weight files: safetensors, or torch pickles with ``weights_only=True``.

Every failure becomes a ``CheckpointError`` that names the file, because a truncated multi-GB download is the
most common reason a checkpoint will not load, and the raw library messages do not say which file it was.
"""

from __future__ import annotations

import json
import math
import struct
import zipfile
from collections.abc import Iterable
from pathlib import Path

import torch

from ..errors import CheckpointError

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_MAX_HEADER_BYTES = 100_000_000  # the safetensors format's own limit
_DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
    "C64": 8,
}
DAMAGED_ADVICE = "The file is truncated or corrupt (an interrupted download or copy?): download or copy it again."


def _claimed_header_bytes(path: Path) -> int | None:
    with path.open("rb") as f:
        head = f.read(8)
    return struct.unpack("<Q", head)[0] if len(head) == 8 else None


def _header_too_large(path: Path, n: int) -> CheckpointError:
    """A header over the format's limit whose bytes are all in the file is refused as too large: calling it
    truncated would send the user to download an intact file again."""
    return CheckpointError(
        f"{path} is not a readable safetensors file: its header is too large ({n} bytes; the safetensors format "
        f"allows at most {_MAX_HEADER_BYTES}, and the safetensors library refuses it too). It was not written by a "
        "standard safetensors writer: re-save the weights with safetensors.torch.save_file."
    )


def safetensors_header(path: Path) -> dict[str, dict]:
    """The tensor entries of a safetensors header, checked against the file size; only the header is read."""
    size = path.stat().st_size

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{path} is not a readable safetensors file: {why}. {DAMAGED_ADVICE}")

    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise bad(f"{size} bytes, shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if _MAX_HEADER_BYTES < n <= size - 8:  # the bytes are there: not damage, a header over the format's limit
            raise _header_too_large(path, n)
        if n < 2 or n > min(_MAX_HEADER_BYTES, size - 8):
            raise bad(f"its header claims {n} bytes in a {size}-byte file")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad(f"its {n}-byte header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise bad("its __metadata__ is not a map of strings")
    data_bytes = size - 8 - n
    for key, entry in header.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            if not (
                isinstance(begin, int) and isinstance(end, int) and all(isinstance(d, int) and d >= 0 for d in shape)
            ):
                raise TypeError
        except (TypeError, KeyError, ValueError):
            raise bad(f"tensor {key!r} has a malformed entry {str(entry)[:120]}") from None
        if not 0 <= begin <= end <= data_bytes:
            raise bad(f"tensor {key!r} lies at bytes {begin}-{end} of a data section of only {data_bytes} bytes")
        if dtype in _DTYPE_BYTES and end - begin != math.prod(shape) * _DTYPE_BYTES[dtype]:
            raise bad(
                f"tensor {key!r} ({dtype} {shape}) should take {math.prod(shape) * _DTYPE_BYTES[dtype]} "
                f"bytes, its entry gives {end - begin}"
            )
    return header


def check_weights_file(path: str | Path) -> list[str]:
    """Cheap integrity check of a weights file, reading only its header; returns its tensor names.

    safetensors: the header is JSON and every tensor's bytes lie inside the file with the size its dtype and
    shape need (what a truncated download breaks). Torch zip pickles: the zip directory is intact (it sits at
    the end of the file); names then come from reading the pickle, so a zip pickle returns ``[]`` here.
    Raises ``CheckpointError`` naming the file, so a loader can fail at once instead of at the first use.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Weights file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return list(safetensors_header(path))
    if suffix in PICKLE_SUFFIXES:
        with path.open("rb") as f:
            magic = f.read(2)
        if magic == b"PK":
            try:
                with zipfile.ZipFile(path) as z:
                    z.infolist()
            except (zipfile.BadZipFile, OSError) as exc:
                raise CheckpointError(f"{path} is not a readable torch file ({exc}). {DAMAGED_ADVICE}") from None
            return []
        if magic[:1] != b"\x80":  # the legacy (non-zip) torch format starts with a pickle protocol byte
            raise CheckpointError(f"{path} is neither a torch zip file nor a pickle. {DAMAGED_ADVICE}")
        return []
    raise CheckpointError(f"{path}: unsupported file type {suffix!r}; use .safetensors (preferred) or .ckpt/.pt.")


_CRC_ALL_BELOW = 256 * 2**20  # whole-file CRC check for torch files up to this size (RNG states, schedulers)


def _walk_pickle(raw: bytes, what: str, count: int = 1) -> None:
    """Check that ``raw`` starts with ``count`` complete, well-formed pickles by reading their opcodes; nothing is
    executed."""
    import io
    import pickletools
    from collections import deque

    stream = io.BytesIO(raw)
    for _ in range(count):
        ops = deque(pickletools.genops(stream), maxlen=1)  # raises ValueError on a cut or garbled stream
        if not ops or ops[0][0].name != "STOP":
            raise ValueError(f"{what} does not end with the pickle STOP opcode")


def check_torch_archive(path: str | Path) -> None:
    """Structural check of a file written by ``torch.save`` (``.bin``, ``.pt``, accelerate's ``.pkl``), no unpickling.

    A zip archive (torch's format since 1.6): its directory reads (it sits at the end, so a cut file fails), every
    record lies inside the file, the ``data.pkl`` record has a good CRC and is one complete pickle, and for files
    under 256 MB every record's CRC is checked. A legacy (non-zip) file's five pickles are walked opcode by opcode
    (its raw tensor bytes after them are not checked). Raises
    ``CheckpointError`` naming the file and what is wrong.
    """
    path = Path(path)

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{path} is damaged: {why}. {DAMAGED_ADVICE}")

    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    size = path.stat().st_size
    if size == 0:
        raise bad("it is empty (0 bytes)")
    with path.open("rb") as f:
        magic = f.read(2)
    if magic != b"PK":
        if magic[:1] != b"\x80":
            raise bad("it is neither a torch zip archive nor a pickle")
        try:  # torch's legacy format: magic number, protocol, system info, the object, its storage keys
            _walk_pickle(path.read_bytes(), "the pickle", count=5)
        except ValueError as exc:
            raise bad(f"the pickle is cut short or garbled ({exc})") from None
        return
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            for info in infos:
                if info.header_offset + info.compress_size > size:
                    raise bad(f"record {info.filename} runs past the end of the {size}-byte file")
            pickles = [i for i in infos if i.filename.rsplit("/", 1)[-1] == "data.pkl"]
            if not pickles:
                raise bad("its zip directory has no data.pkl record")
            raw = z.read(pickles[0])  # zipfile checks the record's CRC
            if size <= _CRC_ALL_BELOW:
                broken = z.testzip()
                if broken is not None:
                    raise bad(f"record {broken} fails its CRC check")
    except CheckpointError:
        raise
    except zipfile.BadZipFile as exc:
        if "not a zip file" in str(exc):  # zipfile's words for a missing end-of-directory record
            raise bad(
                f"its zip directory, at the end of the file, is missing: it is cut short ({size} bytes)"
            ) from None
        raise bad(f"its zip archive does not read ({exc})") from None
    except (zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        raise bad(f"its zip archive does not read ({type(exc).__name__}: {exc})") from None
    try:
        _walk_pickle(raw, "data.pkl")
    except ValueError as exc:
        raise bad(f"its data.pkl is cut short or garbled ({exc})") from None


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
            n = _claimed_header_bytes(self.path) if "header too large" in str(exc).lower() else None
            if n is not None and n <= self.path.stat().st_size - 8:  # all there: the format's limit, not damage
                raise _header_too_large(self.path, n) from exc
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
