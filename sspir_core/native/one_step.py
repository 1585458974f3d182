"""One-step SSP-IR on the native route: its UNet LoRA as weights patches on the user's MODEL, and its start.

A one-step checkpoint (:mod:`sspir_core.weights.one_step`) adds a LoRA on the SD layers of the UNet. On the
native route the SD UNet is the user's MODEL, so the LoRA cannot be merged into our weights: it becomes one
weight patch per layer on the MODEL's clone, under ComfyUI's key for that layer (``diffusion_model.*``, the
LDM layout), so it composes with the user's own LoRAs and with partial loading. The names are mapped by
:func:`sspir_core.weights.ldm_layout.unet_key_to_ldm`, the map the demo and test files are written with.

The step itself: OSEDiff's single evaluation at t = 999 on the unnoised LQ latent ``z`` with
``x0 = (z - sqrt(1 - a) eps) / sqrt(a)``. ComfyUI's euler from ``sigma_999`` to 0 computes ``x0 = x - sigma eps``
on the model input ``x / sqrt(1 + sigma^2)``; with ``x = z sqrt(1 + sigma^2)`` and ``sigma = sqrt((1 - a) / a)``
that is the same formula, so the start below (:func:`one_step_start`) is all ComfyUI needs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import CheckpointError
from ..models.one_step import LoraSpec
from ..weights.ldm_layout import UNET_PREFIX, unet_key_to_ldm

COMFY_UNET_PREFIX = "diffusion_model."
"""ComfyUI's ``BaseModel`` state-dict prefix of the UNet (the LDM file's ``model.`` is stripped on load)."""


@dataclass
class OneStepLora:
    """A one-step checkpoint's LoRA: ``lora_A``/``lora_B`` per target (diffusers UNet names), and its spec."""

    spec: LoraSpec
    tensors: dict[str, torch.Tensor]
    source: str

    def factors(self, target: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) of one target; a clear error naming the file when one is missing."""
        try:
            return self.tensors[f"{target}.lora_A.weight"], self.tensors[f"{target}.lora_B.weight"]
        except KeyError as e:
            raise CheckpointError(f"{self.source}: the one-step LoRA lists {target!r} but has no {e.args[0]}") from e


def comfy_unet_key(name: str, unet_config: Mapping[str, Any]) -> str:
    """ComfyUI's state-dict key (``diffusion_model.*``) of the weight of diffusers UNet module ``name``."""
    return COMFY_UNET_PREFIX + unet_key_to_ldm(f"{name}.weight", unet_config).removeprefix(UNET_PREFIX)


def lora_keys(targets: tuple[str, ...], unet_config: Mapping[str, Any]) -> dict[str, str]:
    """``{diffusers module: ComfyUI weight key}`` for every LoRA target."""
    return {t: comfy_unet_key(t, unet_config) for t in targets}


def comfy_lora_patches(
    lora: OneStepLora, unet_config: Mapping[str, Any], model_weights: Mapping[str, torch.Size]
) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """``{ComfyUI key: (B, A, alpha)}`` checked against the MODEL's weight shapes (``model_weights``).

    ``ModelPatcher.add_patches`` silently skips keys the model lacks, which would sample the model without
    part of its LoRA; here every target must exist and ``B @ A`` must have the weight's shape.
    """
    out = {}
    for target, key in lora_keys(lora.spec.targets, unet_config).items():
        a, b = lora.factors(target)
        if key not in model_weights:
            raise CheckpointError(
                f"{lora.source}: the one-step LoRA's layer {target} ({key}) is not in the MODEL; "
                "load the SD checkpoint the SSP-IR weights were trained on"
            )
        shape = tuple(model_weights[key])
        delta = (b.shape[0], *a.shape[1:])
        if math.prod(delta) != math.prod(shape) or delta[0] != shape[0]:
            raise CheckpointError(
                f"{lora.source}: the one-step LoRA of {target} makes a {delta} weight, the MODEL's {key} is {shape}"
            )
        out[key] = (b, a, float(lora.spec.alpha))
    return out


def one_step_start(latent: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """The k-diffusion ``x`` at ``sigma`` whose model input ``x / sqrt(1 + sigma^2)`` is ``latent`` itself."""
    s = torch.as_tensor(sigma, dtype=torch.float64).flatten()[0].item()
    return latent * math.sqrt(1 + s * s)
