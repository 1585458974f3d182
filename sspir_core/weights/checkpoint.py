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

from .. import __version__
from ..errors import CheckpointError
from ..files import atomic_path, write_text_atomic
from ..models import patch_unet
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
from .sspir_file import (  # noqa: F401 (read_compact_metadata, read_config, REFINE_NAMES: this module's API)
    COMPACT_FORMAT,
    COMPACT_VERSION,
    REFINE_NAMES,
    WEIGHT_NAMES,
    SSPIRFile,
    check_keys,
    first_keys,
    load_checked,
    on_meta,
    read_compact_metadata,
    read_config,
    read_state_dict,
)

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
    file = SSPIRFile(root)
    unet_cfg = file.unet_config
    file.controlnet_config  # noqa: B018 (a UNet saved as the ControlNet is refused before any tensor is read)
    detected = file.base
    base = base or detected
    model_cfg = unet_cfg if base == detected else base_unet_config(base)
    note = (
        ""
        if base == detected
        else (
            f" Its config.json describes {detected} ({describe_base(unet_cfg)}), not {base} "
            f"({describe_base(model_cfg)})."
        )
    )

    unet_part = file.part("unet")
    unet = on_meta(lambda: patch_unet(stock_unet_from_config(model_cfg)))
    load_checked(unet, unet_part.state, unet_part.source, "UNet", base, note)
    del unet_part
    models = SSPIRModels(unet, file.controlnet(base), file.refine(base), base)
    from .one_step import apply

    return apply(models.to(device=device, dtype=dtype), file.one_step(), merge_lora)


def official_unet_config(models: SSPIRModels) -> dict[str, Any]:
    cfg = {k: v for k, v in dict(models.unet.config).items() if not k.startswith("_")}
    return {
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": _diffusers_version(),
        **cfg,
        "use_image_cross_attention": True,
        "use_textual_restore": False,
    }


def official_controlnet_config(models: SSPIRModels) -> dict[str, Any]:
    cfg = {k: v for k, v in dict(models.controlnet.config).items() if not k.startswith("_")}
    cfg["conditioning_embedding_out_channels"] = list(cfg["conditioning_embedding_out_channels"])
    return {
        "_class_name": "ControlNetModel",
        "_diffusers_version": _diffusers_version(),
        **cfg,
        "use_image_cross_attention": True,
        "return_rgbs": True,
        "use_srresnet": False,
    }


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def save_tensors(state: Mapping[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
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
        save_tensors(base_state_dict(module), out / sub / WEIGHT_NAMES[0], {"format": "pt"})
    # through a file object: torch names the records inside the zip after a path's file name (here the random
    # temporary one), "archive" for an open file
    with atomic_path(out / "refine" / "refine.pt") as tmp, open(tmp, "wb") as fh:
        torch.save({k: v.detach().cpu() for k, v in models.refine.state_dict().items()}, fh)
    from .one_step import write_official

    write_official(models, out, save_tensors)  # one-step models: one_step.json + lora/
    return out


# ---------------------------------------------------------------- compact layout


def compact_state_dict(models: SSPIRModels) -> dict[str, torch.Tensor]:
    state = {f"unet.{k}": v for k, v in base_state_dict(models.unet).items() if is_prior_attention_key(k)}
    state.update({f"controlnet.{k}": v for k, v in models.controlnet.state_dict().items()})
    state.update({f"refine.{k}": v for k, v in models.refine.state_dict().items()})
    return state


def save_compact(models: SSPIRModels, path: str | Path, lora: dict[str, torch.Tensor] | None = None) -> Path:
    """One .safetensors with only the SSP-IR parts and its configs as metadata (about 1.0B parameters for SD1.5:
    ControlNet 486M, UNet attentions 509M, Refine 2.6M).

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
    save_tensors({**compact_state_dict(models), **extra_tensors}, path, {**metadata, **extra_meta})
    return path


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
    file = SSPIRFile(path)
    meta = file.metadata
    base = meta["base"]
    if structure(sd_unet.config) != structure(meta["unet_config"]):
        raise CheckpointError(
            f"{path} was trained on {base_words(base)} ({describe_base(meta['unet_config'])}), but the SD UNet given "
            f"is {base_words(infer_base(sd_unet.config))} ({describe_base(sd_unet.config)}). Use the matching SD "
            "checkpoint."
        )
    unet = patch_unet(sd_unet)
    new_keys = {k: v for k, v in unet.state_dict().items() if is_prior_attention_key(k)}
    attentions = file.part("unet")
    check_keys(new_keys, attentions.state, attentions.source, "UNet attentions", base)
    unet.load_state_dict(attentions.state, strict=False)

    models = SSPIRModels(unet, file.controlnet(base), file.refine(base), base)
    from .one_step import apply

    return apply(models.to(device=device, dtype=dtype), file.one_step(), merge_lora)


def stock_unet_from_official(path: str | Path) -> UNet2DConditionModel:
    """The plain SD UNet inside an official checkpoint (its SD weights, without the SSP-IR attentions)."""
    file = SSPIRFile(path)
    part = file.part("unet")
    state = {k: v for k, v in part.state.items() if not is_prior_attention_key(k)}
    unet = on_meta(stock_unet_from_config, file.unet_config)
    load_checked(unet, state, part.source, "SD UNet", file.base)
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
        file = SSPIRFile(path)
        detected = file.base
        file.controlnet_config  # noqa: B018 (read and checked)
        for sub in ("unet", "controlnet"):
            check_weights_file(file.weights_file(sub))
        check_weights_file(file.weights_file("refine"))
    else:
        keys = check_weights_file(path)
        meta = SSPIRFile(path).metadata
        detected = meta["base"]
        # a one-step model (weights/one_step.py) adds its UNet LoRA under lora.
        known = ("unet", "controlnet", "refine", *(("lora",) if meta.get("mode") == ONE_STEP else ()))
        stray = [k for k in keys if k.partition(".")[0] not in known]
        if stray:
            raise CheckpointError(
                f"{path}: unexpected keys {first_keys(stray)} (expected {'/'.join(p + '.' for p in known)} prefixes)"
            )
    if base is not None and base != detected:
        raise CheckpointError(
            f"{path} holds SSP-IR weights for {detected}, but base={base!r} was asked for: "
            f"pick base {detected!r} (or auto) and a {detected} base model"
        )
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
