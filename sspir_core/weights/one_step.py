"""What a one-step SSP-IR checkpoint adds to the two layouts of :mod:`.checkpoint`: the UNet LoRA and its mode.

- official ``checkpoint-N/``: ``one_step.json`` (``{"mode": "one-step", "timestep": 999, "lora": {...}}``) and
  ``lora/unet_lora.safetensors``; ``unet/`` holds the SD + SSP-IR weights without the LoRA, so the folder still
  loads as a plain SSP-IR checkpoint in the official code (which then lacks the LoRA: that is a 50-step model).
- compact ``.safetensors``: metadata ``mode`` and ``one_step`` (the same JSON), tensors ``lora.<module>.lora_A.weight``.

Loading for inference adds the LoRA into the UNet weights (no peft needed); for training it injects it (peft).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..models.build import SSPIRModels
from ..models.one_step import (
    ONE_STEP,
    ONE_STEP_TIMESTEP,
    LoraSpec,
    add_lora,
    load_lora_state_dict,
    lora_state_dict,
    merge_lora_weights,
)

MODE_FILE = "one_step.json"
LORA_FILE = Path("lora") / "unet_lora.safetensors"
LORA_PREFIX = "lora."


@dataclass
class OneStepPart:
    """A one-step checkpoint's UNet LoRA: its spec (from the checked metadata) and tensors.

    ``source``: the file holding the metadata (``one_step.json`` or the compact file); ``lora_source``: the file
    holding the tensors (``lora/unet_lora.safetensors`` or the compact file).
    """

    spec: LoraSpec
    tensors: dict[str, torch.Tensor]
    source: str
    lora_source: str


def mode_metadata(models: SSPIRModels) -> dict[str, Any] | None:
    """The one-step description written beside the weights (None for a 50-step model)."""
    if models.mode != ONE_STEP:
        return None
    if models.lora is None:
        raise CheckpointError(
            "a one-step model whose LoRA was merged cannot be saved as a checkpoint; save it before "
            "merging (the trainer does)"
        )
    return {
        "mode": ONE_STEP,
        "timestep": ONE_STEP_TIMESTEP,
        "output": "x0 = (z - sqrt(1 - abar) eps) / sqrt(abar)",
        "input": "VAE latent of the upscaled LQ, no noise added",
        "lora": models.lora.to_json(),
    }


def write_official(models: SSPIRModels, out: Path, save_tensors: Any) -> None:
    meta = mode_metadata(models)
    if meta is None:
        return
    save_tensors(lora_state_dict(models.unet), out / LORA_FILE, {"format": "pt"})
    from ..files import write_text_atomic

    write_text_atomic(out / MODE_FILE, json.dumps(meta, indent=2, sort_keys=True))


def compact_extras(
    models: SSPIRModels, lora: dict[str, torch.Tensor] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) a one-step model adds to the compact file; empty for a 50-step model. ``lora``: the
    LoRA tensors in the saved layout when the UNet does not carry them as a peft adapter (demo files)."""
    meta = mode_metadata(models)
    if meta is None:
        return {}, {}
    tensors = {LORA_PREFIX + k: v for k, v in (lora if lora is not None else lora_state_dict(models.unet)).items()}
    return tensors, {"mode": ONE_STEP, "one_step": json.dumps(meta)}


def read_mode(path: str | Path) -> str:
    """'one-step' or 'multi-step' for a checkpoint folder or compact file, from its metadata alone (cheap)."""
    path = Path(path)
    if path.is_dir():
        return ONE_STEP if (path / MODE_FILE).is_file() else "multi-step"
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("mode", "multi-step")
    except Exception as e:  # missing, truncated, not safetensors: each has its own error type
        raise CheckpointError(
            f"{path}: cannot read ({type(e).__name__}: {e}); give an SSP-IR checkpoint-N/ folder "
            "or compact .safetensors"
        ) from e


def one_step_spec(meta: dict[str, Any], source: str) -> LoraSpec:
    """The LoRA spec of one-step metadata (``one_step.json`` or the compact ``one_step`` entry), refused with an
    error naming ``source`` when it is not a t = 999 one-step description."""
    if meta.get("mode") != ONE_STEP or int(meta.get("timestep", -1)) != ONE_STEP_TIMESTEP:
        raise CheckpointError(
            f"{source}: one-step metadata says mode={meta.get('mode')!r}, timestep="
            f"{meta.get('timestep')!r}; this pack runs one-step models at t = {ONE_STEP_TIMESTEP}"
        )
    try:
        return LoraSpec.from_json(meta["lora"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: the one-step metadata has no valid 'lora' entry ({e})") from e


def apply(models: SSPIRModels, part: OneStepPart | None, merge: bool = True) -> SSPIRModels:
    """Inject a one-step file's LoRA (read by :meth:`.sspir_file.SSPIRFile.one_step`; None: a 50-step model,
    returned as it is) into ``models.unet``, load it, and merge it unless ``merge`` is False (training, resume)."""
    if part is None:
        return models
    models.mode = ONE_STEP
    if merge:  # plain layers with the LoRA folded in: inference needs no peft
        merge_lora_weights(models.unet, part.spec, part.tensors, part.source)
        models.lora = None
        return models
    add_lora(models.unet, part.spec, generator=torch.Generator().manual_seed(0))  # values replaced just below
    load_lora_state_dict(models.unet, part.tensors, part.source)
    models.lora = part.spec
    return models
