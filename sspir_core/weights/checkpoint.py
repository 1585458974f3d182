"""Reading and writing SSP-IR weights.

Two layouts:
- **official**: the ``checkpoint-N/`` folder that the authors' ``train.py`` writes
  (``unet/`` and ``controlnet/`` as diffusers config + weights, ``refine/refine.pt``). Its UNet is the
  full UNet, SD weights included.
- **compact**: one ``.safetensors`` with only what SSP-IR trains (ControlNet, the UNet's new
  attentions, the Refine layer) plus metadata; applied on top of the user's own SD UNet.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from .. import __version__
from ..errors import CheckpointError
from ..files import atomic_path, write_text_atomic
from ..models import RefineLayer, make_controlnet, patch_unet
from ..models.build import (
    SSPIRModels,
    base_unet_config,
    describe_base,
    infer_base,
    stock_unet_from_config,
    structure,
)
from ..models.one_step import ONE_STEP, base_state_dict
from ..models.unet import is_prior_attention_key

COMPACT_FORMAT = "sspir-compact"
COMPACT_VERSION = "1"
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
REFINE_NAMES = ("refine.pt", "refine.safetensors", "refine.bin")
_ROOT_PREFIXES = ("module.", "_orig_mod.")


# ---------------------------------------------------------------- low-level files

def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a weights file (see :class:`~sspir_core.weights.WeightsFile`), with the ``module.``
    (DDP) and ``_orig_mod.`` (torch.compile) prefixes that training wrappers add stripped."""
    from .weights_file import read_state_dict as read_tensors

    out = {}
    for k, v in read_tensors(path).items():
        for prefix in _ROOT_PREFIXES:
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def read_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: config file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e


def _weights_file(folder: Path) -> Path:
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{folder}: no weights file (looked for {', '.join(WEIGHT_NAMES)})")


def _first(keys: list[str], n: int = 5) -> str:
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
        parts.append(f"{len(shapes)} keys with other shapes (first: {_first(shapes, 3)})")
    if missing:
        parts.append(f"{len(missing)} missing keys (first: {_first(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (first: {_first(unexpected)})")
    hint = (
        " Different shapes usually mean a checkpoint for another base model (SD1.5 vs SD2.1): pick the matching base."
        if shapes
        else " Missing keys usually mean a truncated or partial file: copy it again."
    )
    raise CheckpointError(
        f"{source} does not match the SSP-IR {what} for base '{base}': {'; '.join(parts)}.{note}{hint}"
    )


def _load_into(
    module: nn.Module, state: dict[str, torch.Tensor], source: str, what: str, base: str, note: str = ""
) -> None:
    check_keys(module.state_dict(), state, source, what, base, note)
    module.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"{source}: these {what} tensors were not loaded: {_first(left)}")


def _meta(fn, *args, **kwargs):
    with torch.device("meta"):
        return fn(*args, **kwargs)


# ---------------------------------------------------------------- official layout

def load_official_checkpoint(
    path: str | Path,
    base: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    merge_lora: bool = True,
) -> SSPIRModels:
    """Load a ``checkpoint-N/`` folder written by the official ``train.py`` (or by :func:`save_official_checkpoint`).

    ``base`` ('sd15'/'sd21') is checked against the checkpoint; None takes it from the UNet config. A one-step
    checkpoint (``one_step.json``) gets its UNet LoRA, merged unless ``merge_lora`` is False (see :mod:`.one_step`).
    """
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"{root}: checkpoint folder not found")
    for sub in ("unet", "controlnet"):
        if not (root / sub).is_dir():
            raise CheckpointError(
                f"{root}: no '{sub}/' folder. Point at a checkpoint-N/ folder written by SSP-IR's train.py "
                "(it holds unet/, controlnet/ and refine/)."
            )
    unet_cfg = read_config(root / "unet" / "config.json")
    cn_cfg = read_config(root / "controlnet" / "config.json")
    if cn_cfg.get("_class_name") == "UNet2DConditionModel":
        raise CheckpointError(
            f"{root / 'controlnet'} holds a UNet, not a ControlNet: the official train.py's final save overwrites the "
            "ControlNet with the UNet in the output folder. Load one of its checkpoint-N/ folders instead."
        )
    detected = infer_base(unet_cfg)
    base = base or detected
    model_cfg = unet_cfg if base == detected else base_unet_config(base)
    note = "" if base == detected else (
        f" Its config.json describes {detected} ({describe_base(unet_cfg)}), not {base} ({describe_base(model_cfg)})."
    )

    unet_file = _weights_file(root / "unet")
    unet = _meta(lambda: patch_unet(stock_unet_from_config(model_cfg)))
    _load_into(unet, read_state_dict(unet_file), str(unet_file), "UNet", base, note)

    cn_file = _weights_file(root / "controlnet")
    controlnet = _meta(make_controlnet, cn_cfg, zero_init=False)
    _load_into(controlnet, read_state_dict(cn_file), str(cn_file), "ControlNet", base)

    refine = _load_refine(root / "refine", base)
    models = SSPIRModels(unet, controlnet, refine, base)
    from .one_step import apply_official

    return apply_official(models.to(device=device, dtype=dtype), root, merge_lora)


def _load_refine(folder: Path, base: str) -> RefineLayer:
    for name in REFINE_NAMES:
        if (folder / name).is_file():
            file = folder / name
            break
    else:
        raise CheckpointError(f"{folder}: no Refine-layer weights (looked for {', '.join(REFINE_NAMES)})")
    state = read_state_dict(file)
    try:
        cfg = RefineLayer.config_from_state_dict(state)
    except KeyError as e:
        raise CheckpointError(f"{file}: not a Refine-layer (TPBNet) state dict: {e}") from e
    refine = _meta(RefineLayer, **cfg)
    _load_into(refine, state, str(file), "Refine layer", base)
    return refine


def official_unet_config(models: SSPIRModels) -> dict[str, Any]:
    cfg = {k: v for k, v in dict(models.unet.config).items() if not k.startswith("_")}
    return {"_class_name": "UNet2DConditionModel", "_diffusers_version": _diffusers_version(), **cfg,
            "use_image_cross_attention": True, "use_textual_restore": False}


def official_controlnet_config(models: SSPIRModels) -> dict[str, Any]:
    cfg = {k: v for k, v in dict(models.controlnet.config).items() if not k.startswith("_")}
    cfg["conditioning_embedding_out_channels"] = list(cfg["conditioning_embedding_out_channels"])
    return {"_class_name": "ControlNetModel", "_diffusers_version": _diffusers_version(), **cfg,
            "use_image_cross_attention": True, "return_rgbs": True, "use_srresnet": False}


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def _save_tensors(state: Mapping[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """safetensors file written atomically, readable as the umask allows, and the same bytes for the same input."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:  # never a half-written file under the real name
        save_file({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)
        if metadata:
            _sort_header_metadata(tmp)


def _sort_header_metadata(path: Path) -> None:
    """Rewrite the header's ``__metadata__`` in sorted key order, in place.

    safetensors serialises the metadata from a Rust HashMap, whose order changes on every write, so two saves
    of the same model differed in their bytes and a checksum could not identify a model. Tensors are already
    written in a fixed order. The re-encoded header is the same JSON with the same length; it is padded with
    spaces to the original length, as safetensors pads, so the tensor data does not move.
    """
    with open(path, "r+b") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(size))
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(raw) > size:  # cannot happen for a header safetensors wrote: same keys and values, same length
            raise RuntimeError(f"{path}: sorted safetensors header is longer than the original")
        fh.seek(8)
        fh.write(raw + b" " * (size - len(raw)))


def save_official_checkpoint(models: SSPIRModels, out_dir: str | Path) -> Path:
    """Write ``unet/``, ``controlnet/`` and ``refine/refine.pt`` exactly as the official ``train.py`` does."""
    out = Path(out_dir)
    for sub, cfg, module in (
        ("unet", official_unet_config(models), models.unet),
        ("controlnet", official_controlnet_config(models), models.controlnet),
    ):
        write_text_atomic(out / sub / "config.json", json.dumps(cfg, indent=2, sort_keys=True))
        _save_tensors(base_state_dict(module), out / sub / WEIGHT_NAMES[0], {"format": "pt"})
    # through a file object: torch names the records inside the zip after a path's file name (here the random
    # temporary one), "archive" for an open file
    with atomic_path(out / "refine" / "refine.pt") as tmp, open(tmp, "wb") as fh:
        torch.save({k: v.detach().cpu() for k, v in models.refine.state_dict().items()}, fh)
    from .one_step import write_official

    write_official(models, out, _save_tensors)  # one-step models: one_step.json + lora/
    return out


# ---------------------------------------------------------------- compact layout

def compact_state_dict(models: SSPIRModels) -> dict[str, torch.Tensor]:
    state = {f"unet.{k}": v for k, v in base_state_dict(models.unet).items() if is_prior_attention_key(k)}
    state.update({f"controlnet.{k}": v for k, v in models.controlnet.state_dict().items()})
    state.update({f"refine.{k}": v for k, v in models.refine.state_dict().items()})
    return state


def save_compact(models: SSPIRModels, path: str | Path, lora: dict[str, torch.Tensor] | None = None) -> Path:
    """One .safetensors with only the SSP-IR parts (about 0.5B parameters for SD1.5) and its configs as metadata.

    ``lora``: a one-step model's LoRA tensors when its UNet does not hold them as a peft adapter."""
    path = Path(path)
    metadata = {
        "format": COMPACT_FORMAT,
        "format_version": COMPACT_VERSION,
        "base": models.base,
        "unet_config": json.dumps({k: v for k, v in dict(models.unet.config).items() if not k.startswith("_")}),
        "controlnet_config": json.dumps(official_controlnet_config(models)),
        "refine_config": json.dumps(models.refine.config),
        "writer": f"comfyui-sspir {__version__}",
    }
    from .one_step import compact_extras

    extra_tensors, extra_meta = compact_extras(models, lora)  # one-step models: the LoRA and mode
    _save_tensors({**compact_state_dict(models), **extra_tensors}, path, {**metadata, **extra_meta})
    return path


def read_compact_metadata(path: str | Path) -> dict[str, Any]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read ({type(e).__name__}: {e}); the file is truncated or not safetensors") from e
    if meta.get("format") != COMPACT_FORMAT:
        raise CheckpointError(
            f"{path} is not an SSP-IR compact file (metadata format={meta.get('format')!r}). For a checkpoint-N/ "
            "folder from train.py, pass the folder instead."
        )
    if meta.get("format_version") != COMPACT_VERSION:
        raise CheckpointError(f"{path}: compact format version {meta.get('format_version')} is not supported "
                              f"(this pack reads version {COMPACT_VERSION}); update the pack")
    out: dict[str, Any] = dict(meta)
    for key in ("unet_config", "controlnet_config", "refine_config"):
        out[key] = json.loads(meta[key])
    return out


def load_compact(
    path: str | Path,
    sd_unet: UNet2DConditionModel,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    merge_lora: bool = True,
) -> SSPIRModels:
    """Apply a compact file to the user's SD UNet (patched in place) and build the ControlNet and Refine layer.

    A one-step file's LoRA is applied too, merged unless ``merge_lora`` is False.
    """
    from .base_match import base_words

    path = Path(path)
    meta = read_compact_metadata(path)
    base = meta["base"]
    if structure(sd_unet.config) != structure(meta["unet_config"]):
        raise CheckpointError(
            f"{path} was trained on {base_words(base)} ({describe_base(meta['unet_config'])}), but the SD UNet given "
            f"is {base_words(infer_base(sd_unet.config))} ({describe_base(sd_unet.config)}). Use the matching SD "
            "checkpoint."
        )
    state = read_state_dict(path)
    parts: dict[str, dict[str, torch.Tensor]] = {"unet": {}, "controlnet": {}, "refine": {}, "lora": {}}
    for k, v in state.items():
        head, _, rest = k.partition(".")
        if head not in parts:
            raise CheckpointError(f"{path}: unexpected key {k!r} (expected unet./controlnet./refine. prefixes)")
        parts[head][k.partition(".")[2] if rest else k] = v

    unet = patch_unet(sd_unet)
    new_keys = {k: v for k, v in unet.state_dict().items() if is_prior_attention_key(k)}
    check_keys(new_keys, parts["unet"], str(path), "UNet attentions", base)
    unet.load_state_dict(parts["unet"], strict=False)

    controlnet = _meta(make_controlnet, meta["controlnet_config"], zero_init=False)
    _load_into(controlnet, parts["controlnet"], str(path), "ControlNet", base)
    refine = _meta(RefineLayer, **meta["refine_config"])
    _load_into(refine, parts["refine"], str(path), "Refine layer", base)
    models = SSPIRModels(unet, controlnet, refine, base)
    from .one_step import apply_compact

    return apply_compact(models.to(device=device, dtype=dtype), meta, parts["lora"], str(path), merge_lora)


def stock_unet_from_official(path: str | Path) -> UNet2DConditionModel:
    """The plain SD UNet inside an official checkpoint (its SD weights, without the SSP-IR attentions)."""
    root = Path(path)
    cfg = read_config(root / "unet" / "config.json")
    file = _weights_file(root / "unet")
    state = {k: v for k, v in read_state_dict(file).items() if not is_prior_attention_key(k)}
    unet = _meta(stock_unet_from_config, cfg)
    _load_into(unet, state, str(file), "SD UNet", infer_base(cfg))
    return unet


def check_sspir_weights(path: str | Path, base: str | None = None) -> str:
    """Check SSP-IR weights without reading a tensor (for a loader node: a damaged file fails there, naming it);
    returns their base.

    Compact file: header integrity (every tensor's bytes inside the file), its format metadata and key
    prefixes. Official folder: both configs, and the header of each weights file (Refine layer included).
    """
    from .weights_file import check_weights_file

    path = Path(path)
    if path.is_dir():
        if not (path / "unet").is_dir() or not (path / "controlnet").is_dir():
            raise CheckpointError(f"{path}: no unet/ and controlnet/ folders: point at a checkpoint-N/ folder "
                                  "written by SSP-IR's train.py")
        detected = infer_base(read_config(path / "unet" / "config.json"))
        read_config(path / "controlnet" / "config.json")
        for sub in ("unet", "controlnet"):
            check_weights_file(_weights_file(path / sub))
        refine = next((path / "refine" / n for n in REFINE_NAMES if (path / "refine" / n).is_file()), None)
        if refine is None:
            raise CheckpointError(f"{path / 'refine'}: no Refine-layer weights (looked for {', '.join(REFINE_NAMES)})")
        check_weights_file(refine)
    else:
        keys = check_weights_file(path)
        meta = read_compact_metadata(path)
        detected = meta["base"]
        # a one-step model (weights/one_step.py) adds its UNet LoRA under lora.
        known = ("unet", "controlnet", "refine", *(("lora",) if meta.get("mode") == ONE_STEP else ()))
        stray = [k for k in keys if k.partition(".")[0] not in known]
        if stray:
            raise CheckpointError(f"{path}: unexpected keys {_first(stray)} (expected "
                                  f"{'/'.join(p + '.' for p in known)} prefixes)")
    if base is not None and base != detected:
        raise CheckpointError(f"{path} holds SSP-IR weights for {detected}, but base={base!r} was asked for: "
                              f"pick base {detected!r} (or auto) and a {detected} base model")
    return detected


def load_sspir_weights(
    path: str | Path,
    sd_unet: UNet2DConditionModel | None = None,
    base: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    merge_lora: bool = True,
) -> SSPIRModels:
    """Load either layout: a ``checkpoint-N/`` folder or a compact ``.safetensors`` (which needs ``sd_unet``)."""
    path = Path(path)
    if path.is_dir():
        return load_official_checkpoint(path, base=base, device=device, dtype=dtype, merge_lora=merge_lora)
    if sd_unet is None:
        raise CheckpointError(
            f"{path} is a compact SSP-IR file: it holds only the SSP-IR parts, so the SD UNet must come from your "
            "SD checkpoint (pass the SD1.5/SD2.1 weights)."
        )
    return load_compact(path, sd_unet, device=device, dtype=dtype, merge_lora=merge_lora)


def official_to_compact(checkpoint_dir: str | Path, out_file: str | Path) -> Path:
    return save_compact(load_official_checkpoint(checkpoint_dir, merge_lora=False), out_file)


def compact_to_official(compact_file: str | Path, sd_unet: UNet2DConditionModel, out_dir: str | Path) -> Path:
    return save_official_checkpoint(load_compact(compact_file, sd_unet, merge_lora=False), out_dir)
