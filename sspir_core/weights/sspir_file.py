"""The one reader of SSP-IR weights on disk, for both layouts and every loader.

An official ``checkpoint-N/`` folder (``unet/``, ``controlnet/``, ``refine/`` and, for a one-step model,
``one_step.json`` + ``lora/``) and a compact ``.safetensors`` (``unet.``/``controlnet.``/``refine.``/``lora.``
tensors, configs as metadata) hold the same parts. :class:`SSPIRFile` answers what they hold (base, configs,
each part's tensors, the ControlNet and Refine layer built from them, the one-step LoRA) with the same checks and
errors whichever loader asks: the diffusers loaders of :mod:`.checkpoint` and the native route's
:func:`sspir_core.native.patch.load_native_patch`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from ..errors import CheckpointError
from ..models import RefineLayer, make_controlnet
from ..models.build import infer_base
from ..models.controlnet import SSPIRControlNet
from ..models.one_step import ONE_STEP
from .one_step import LORA_FILE, LORA_PREFIX, MODE_FILE, OneStepPart, one_step_spec
from .weights_file import read_state_dict as read_tensors

COMPACT_FORMAT = "sspir-compact"
COMPACT_VERSION = "1"
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
REFINE_NAMES = ("refine.pt", "refine.safetensors", "refine.bin")
PARTS = ("unet", "controlnet", "refine", "lora")
"""The key prefixes of a compact file (``lora.`` only in a one-step file)."""
_ROOT_PREFIXES = ("module.", "_orig_mod.")
T = TypeVar("T")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a weights file (see :class:`~sspir_core.weights.WeightsFile`), with the ``module.``
    (DDP) and ``_orig_mod.`` (torch.compile) prefixes that training wrappers add stripped."""
    out = {}
    for k, v in read_tensors(path).items():
        for prefix in _ROOT_PREFIXES:
            while k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out


def read_config(path: str | Path) -> dict[str, Any]:
    """A JSON config file; a missing or invalid one is a :class:`CheckpointError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: config file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e


def read_compact_metadata(path: str | Path) -> dict[str, Any]:
    """A compact file's metadata with its three configs parsed; only the header is read. Refuses files of
    another format or format version."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise CheckpointError(
            f"{path}: cannot read ({type(e).__name__}: {e}); the file is truncated or not safetensors"
        ) from e
    if meta.get("format") != COMPACT_FORMAT:
        raise CheckpointError(
            f"{path} is not an SSP-IR compact file (metadata format={meta.get('format')!r}). For a checkpoint-N/ "
            "folder from train.py, pass the folder instead."
        )
    if meta.get("format_version") != COMPACT_VERSION:
        raise CheckpointError(
            f"{path}: compact format version {meta.get('format_version')} is not supported "
            f"(this pack reads version {COMPACT_VERSION}); update the pack"
        )
    out: dict[str, Any] = dict(meta)
    for key in ("unet_config", "controlnet_config", "refine_config"):
        out[key] = json.loads(meta[key])
    return out


def first_keys(keys: list[str], n: int = 5) -> str:
    """The first ``n`` of ``keys`` and how many more, for an error message."""
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def check_keys(
    model_state: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    source: str,
    what: str,
    base: str,
    note: str = "",
) -> None:
    """Raise a :class:`CheckpointError` naming the file, the base and the first bad keys on any mismatch."""
    missing = [k for k in model_state if k not in state]
    unexpected = [k for k in state if k not in model_state]
    shapes = [
        f"{k}: file {list(state[k].shape)} vs model {list(model_state[k].shape)}"
        for k in model_state
        if k in state and tuple(state[k].shape) != tuple(model_state[k].shape)
    ]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} keys with other shapes (first: {first_keys(shapes, 3)})")
    if missing:
        parts.append(f"{len(missing)} missing keys (first: {first_keys(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (first: {first_keys(unexpected)})")
    hint = (
        " Different shapes usually mean a checkpoint for another base model (SD1.5 vs SD2.1): pick the matching base."
        if shapes
        else " Missing keys usually mean a truncated or partial file: copy it again."
    )
    raise CheckpointError(
        f"{source} does not match the SSP-IR {what} for base '{base}': {'; '.join(parts)}.{note}{hint}"
    )


def load_checked(
    module: nn.Module, state: dict[str, torch.Tensor], source: str, what: str, base: str, note: str = ""
) -> None:
    """Load ``state`` into a module built on the meta device (tensors assigned, not copied), after
    :func:`check_keys`; a tensor left on meta is an error naming it."""
    check_keys(module.state_dict(), state, source, what, base, note)
    module.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"{source}: these {what} tensors were not loaded: {first_keys(left)}")


def on_meta(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on the meta device: a module skeleton that allocates nothing, for
    :func:`load_checked`."""
    with torch.device("meta"):
        return fn(*args, **kwargs)


def folder_weights_file(folder: Path) -> Path:
    """The diffusers weights file of ``unet/`` or ``controlnet/`` (safetensors first)."""
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{folder}: no weights file (looked for {', '.join(WEIGHT_NAMES)})")


@dataclass
class Part:
    """One part's tensors (names without the compact prefix) and the file they came from, named in errors."""

    state: dict[str, torch.Tensor]
    source: str


class SSPIRFile:
    """SSP-IR weights at ``path``, either layout; each part is read when asked for.

    Opening checks only what the layout needs to be recognised (an official folder's ``unet/`` and
    ``controlnet/``; a compact file's format metadata), so a loader fails on the first thing it reads, naming it.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.official = self.path.is_dir()
        if self.official:
            for sub in ("unet", "controlnet"):
                if not (self.path / sub).is_dir():
                    raise CheckpointError(
                        f"{self.path}: no '{sub}/' folder. Point at a checkpoint-N/ folder written by SSP-IR's "
                        "train.py (it holds unet/, controlnet/ and refine/)."
                    )

    # ------------------------------------------------------------------ descriptions (no tensor read)

    @cached_property
    def metadata(self) -> dict[str, Any]:
        """A compact file's metadata (configs parsed); empty for an official folder."""
        return {} if self.official else read_compact_metadata(self.path)

    @cached_property
    def unet_config(self) -> dict[str, Any]:
        """The UNet config: the full UNet's ``unet/config.json``, or the compact file's base UNet config."""
        if self.official:
            return read_config(self.path / "unet" / "config.json")
        return self.metadata["unet_config"]

    @cached_property
    def controlnet_config(self) -> dict[str, Any]:
        """The ControlNet config (diffusers' config.json keys, SSP-IR's additions included)."""
        if not self.official:
            return self.metadata["controlnet_config"]
        cfg = read_config(self.path / "controlnet" / "config.json")
        if cfg.get("_class_name") == "UNet2DConditionModel":
            raise CheckpointError(
                f"{self.path / 'controlnet'} holds a UNet, not a ControlNet: the official train.py's final save "
                "overwrites the ControlNet with the UNet in the output folder. Load one of its checkpoint-N/ folders "
                "instead."
            )
        return cfg

    @property
    def base(self) -> str:
        """'sd15' or 'sd21': from the UNet config of a folder, from the metadata of a compact file."""
        if self.official:
            return infer_base(self.unet_config)
        return self.metadata["base"]

    def weights_file(self, part: str) -> Path:
        """The file holding ``part`` ('unet', 'controlnet', 'refine'): the compact file itself, or the folder's."""
        if not self.official:
            return self.path
        if part == "refine":
            folder = self.path / "refine"
            for name in REFINE_NAMES:
                if (folder / name).is_file():
                    return folder / name
            raise CheckpointError(f"{folder}: no Refine-layer weights (looked for {', '.join(REFINE_NAMES)})")
        return folder_weights_file(self.path / part)

    # ------------------------------------------------------------------ tensors

    @cached_property
    def _compact_parts(self) -> dict[str, dict[str, torch.Tensor]]:
        parts: dict[str, dict[str, torch.Tensor]] = {p: {} for p in PARTS}
        for k, v in read_state_dict(self.path).items():
            head, _, rest = k.partition(".")
            if head not in parts or not rest:
                raise CheckpointError(
                    f"{self.path}: unexpected key {k!r} (expected {'/'.join(p + '.' for p in PARTS)} prefixes)"
                )
            parts[head][rest] = v
        return parts

    def part(self, name: str) -> Part:
        """The tensors of 'unet' (an official folder's whole UNet, SD weights included; a compact file's SSP-IR
        attentions), 'controlnet' or 'refine'."""
        if self.official:
            file = self.weights_file(name)
            return Part(read_state_dict(file), str(file))
        return Part(self._compact_parts[name], str(self.path))

    def refine_config(self, refine: Part) -> dict[str, Any]:
        """The Refine layer's constructor arguments: from the metadata, or (folder) from its tensors' shapes."""
        if not self.official:
            return self.metadata["refine_config"]
        try:
            return RefineLayer.config_from_state_dict(refine.state)
        except KeyError as e:
            raise CheckpointError(f"{refine.source}: not a Refine-layer (TPBNet) state dict: {e}") from e

    def controlnet(self, base: str) -> SSPIRControlNet:
        """The ControlNet with its weights, checked against ``base`` (errors name the file)."""
        cn = self.part("controlnet")
        controlnet = on_meta(make_controlnet, self.controlnet_config, zero_init=False)
        load_checked(controlnet, cn.state, cn.source, "ControlNet", base)
        return controlnet

    def refine(self, base: str) -> RefineLayer:
        """The Refine layer with its weights, checked against ``base``."""
        part = self.part("refine")
        refine = on_meta(RefineLayer, **self.refine_config(part))
        load_checked(refine, part.state, part.source, "Refine layer", base)
        return refine

    def one_step(self) -> OneStepPart | None:
        """The one-step LoRA, checked against its metadata; None for a 50-step model. LoRA tensors without
        one-step metadata are an error, not ignored."""
        if self.official:
            mode_file, lora_file = self.path / MODE_FILE, self.path / LORA_FILE
            if not mode_file.is_file():
                return None
            if not lora_file.is_file():
                raise CheckpointError(
                    f"{mode_file} says one-step but {lora_file} is missing: copy the whole checkpoint folder"
                )
            try:
                meta = json.loads(mode_file.read_text())
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{mode_file}: not valid JSON ({e})") from e
            return OneStepPart(
                one_step_spec(meta, str(mode_file)), read_tensors(lora_file), str(mode_file), str(lora_file)
            )
        tensors = self._compact_parts["lora"]
        if self.metadata.get("mode", "multi-step") != ONE_STEP:
            if tensors:
                raise CheckpointError(
                    f"{self.path}: {LORA_PREFIX}* tensors in a file whose metadata does not say one-step"
                )
            return None
        try:
            meta = json.loads(self.metadata["one_step"])
        except (KeyError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{self.path}: metadata says one-step but has no valid 'one_step' entry ({e})") from e
        return OneStepPart(one_step_spec(meta, str(self.path)), tensors, str(self.path), str(self.path))
