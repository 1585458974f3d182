"""Shared machinery for captioners that run a transformers model from a local folder.

Folders are never hub ids: everything loads with ``local_files_only=True``, and remote code stays off
unless the user turns it on.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

from ..devices import choose_device, choose_dtype
from ..errors import CheckpointError, InputError
from .base import Captioner, CaptionerError

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def resolve_model_dir(path: str | Path | None, *, backend: str, expected: str) -> Path:
    """Check that ``path`` is a local model folder with a config.json; say which layout is expected if not."""
    if path is None or str(path).strip() == "":
        raise InputError(f"the {backend} captioner needs a local model folder ({expected})")
    folder = Path(path).expanduser()
    if not folder.exists():
        raise CheckpointError(
            f"{backend} model folder not found: {folder}. Expected a local folder in the transformers "
            f"layout, e.g. {expected} downloaded to a local folder (config.json, weights, processor files). "
            "Hub ids are not fetched: download the model first and give its path."
        )
    if not folder.is_dir():
        raise CheckpointError(f"{backend} model path is not a folder: {folder} (expected a folder like {expected})")
    if not (folder / "config.json").is_file():
        raise CheckpointError(
            f"{folder} has no config.json: it is not a transformers model folder. Expected the layout of {expected}."
        )
    return folder.resolve()


def read_config(folder: Path) -> dict[str, Any]:
    try:
        with open(folder / "config.json", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {folder / 'config.json'}: {exc}") from exc


def model_fingerprint(folder: Path) -> str:
    """Folder path + config.json content + weight file names, sizes and mtimes: changes when the model does."""
    h = hashlib.sha256(str(folder).encode())
    h.update((folder / "config.json").read_bytes())
    for p in sorted(folder.iterdir()):
        if p.suffix in _WEIGHT_SUFFIXES and p.is_file():
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def dtype_kwarg(dtype: Any) -> dict[str, Any]:
    """transformers renamed ``torch_dtype`` to ``dtype`` in 4.56; pass whichever this version reads."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def transformers_class(name: str, *, backend: str) -> Any:
    import transformers

    cls = getattr(transformers, name, None)
    if cls is None:
        raise CaptionerError(
            f"transformers {transformers.__version__} has no {name}, which the {backend} captioner needs: "
            "upgrade transformers"
        )
    return cls


@contextlib.contextmanager
def seeded(seed: int | None, device: Any) -> Iterator[None]:
    """Seed sampling for one generate() call without disturbing the caller's global RNG state."""
    import torch

    if seed is None:
        yield
        return
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def move_inputs(inputs: Any, device: Any, dtype: Any) -> dict[str, Any]:
    """Processor outputs to the model's device; floating tensors (pixels) to the model's dtype."""
    out: dict[str, Any] = {}
    for key, value in dict(inputs).items():
        if hasattr(value, "to") and hasattr(value, "is_floating_point"):
            value = value.to(device, dtype) if value.is_floating_point() else value.to(device)
        out[key] = value
    return out


def _checked_every_token(check: Callable[[], None]) -> Any:
    """A stopping-criteria list that calls ``check`` after each generated token (``check`` raises to cancel)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Checked(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            check()
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([Checked()])


class LocalModelCaptioner(Captioner):
    """A transformers vision-language model loaded lazily from a local folder."""

    expected_layout: ClassVar[str] = ""
    default_decoding: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        model_dir: str | Path,
        *,
        device: Any = "auto",
        dtype: Any = "auto",
        max_new_tokens: int | None = None,
        generate_kwargs: dict[str, Any] | None = None,
        trust_remote_code: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.model_dir = resolve_model_dir(model_dir, backend=self.name, expected=self.expected_layout)
        self.config = read_config(self.model_dir)
        self.device = choose_device(device)
        self.dtype = choose_dtype(dtype, self.device)
        self.trust_remote_code = bool(trust_remote_code)
        decoding = dict(self.default_decoding)
        if max_new_tokens is not None:
            if int(max_new_tokens) < 1:
                raise InputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
            decoding["max_new_tokens"] = int(max_new_tokens)
        decoding.update(generate_kwargs or {})
        if not decoding.get("do_sample", False):
            for key in ("temperature", "top_p", "top_k"):
                decoding.pop(key, None)
        self.decoding = decoding
        self.model: Any = None
        self.processor: Any = None
        self._fingerprint = model_fingerprint(self.model_dir)

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "model": self._fingerprint, "decoding": self.decoding}

    def _load(self) -> tuple[Any, Any]:
        raise NotImplementedError

    def _ensure_loaded(self) -> None:
        if self.model is not None:
            return
        try:
            model, processor = self._load()
        except (CaptionerError, CheckpointError, InputError):
            raise
        except Exception as exc:  # transformers raises many types; name the folder in every case
            raise CheckpointError(f"could not load the {self.name} model from {self.model_dir}: {exc}") from exc
        self.model = model.to(self.device).eval()
        self.processor = processor

    def unload(self) -> None:
        if self.model is None:
            return
        device = self.device
        self.model = None
        self.processor = None
        gc.collect()
        import torch

        if device.type == "cuda" and torch.cuda.is_available():
            torch.cuda.empty_cache()
        elif device.type == "mps" and hasattr(torch, "mps"):
            torch.mps.empty_cache()

    def _generate(self, inputs: Any, *, new_tokens_only: bool = True) -> str:
        """Run generate() seeded and decode it without special tokens."""
        import torch

        batch = move_inputs(inputs, self.device, self.dtype)
        extra = {} if self.check is None else {"stopping_criteria": _checked_every_token(self.check)}
        with torch.inference_mode(), seeded(self.seed, self.device):
            out = self.model.generate(**batch, **self.decoding, **extra)
        if new_tokens_only and "input_ids" in batch and not self.model.config.is_encoder_decoder:
            out = out[:, batch["input_ids"].shape[1] :]
        return self.processor.batch_decode(out, skip_special_tokens=True)[0]

    def _caption_one(self, image: Image.Image) -> str:
        self._ensure_loaded()
        return self._run(image)

    def _run(self, image: Image.Image) -> str:
        raise NotImplementedError
