"""ComfyUI glue of one-step SSP-IR on the native route (see :mod:`sspir_core.native.one_step`).

Hooks (public, on the clone Apply SSP-IR returns; checked against ComfyUI 0.3.75):
- ``add_patches`` with ``comfy.weight_adapter.LoRAAdapter`` values: the checkpoint's UNet LoRA as weight patches
  under ComfyUI's ``diffusion_model.*`` keys, beside any LoRA the user loaded (applied when the UNet is loaded,
  also partially).
- ``add_object_patch("model_sampling", ...)`` (start "paper"): a subclass of the MODEL's own sampling whose
  start-of-sampling noising at ``sigma_999`` is the one-step start (the LQ latent itself, no noise), so KSampler
  with 1 step (scheduler simple/normal/karras: their one sigma is ``sigma_999``) and cfg 1 runs OSEDiff's step.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from sspir_core.errors import CheckpointError, InputError
from sspir_core.native.one_step import comfy_lora_patches, one_step_start

from .native_patch import UNSET, retyped_sampling

log = logging.getLogger("sspir")


def one_step_patches(model: Any, patch: Any) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]] | None:
    """The one-step LoRA of ``patch`` as ``{ComfyUI key: (B, A, alpha)}`` checked on ``model``; None for 50 steps.

    Called before any work, so a LoRA that does not fit the MODEL is a node error naming both.
    """
    lora = patch.module.one_step
    if lora is None:
        return None
    shapes = {k: v.shape for k, v in model.model.state_dict().items() if k.startswith("diffusion_model.")}
    try:
        return comfy_lora_patches(lora, patch.module.unet_config, shapes)
    except CheckpointError as e:
        raise InputError(f"Apply SSP-IR: {e}") from e


def is_one_step_sigma(sigma: float, sigma_max: float) -> bool:
    """``sigma`` is the table's last (t = 999) up to the rounding of the schedulers that rebuild it (normal goes
    through log-sigma interpolation, karras through a power): 1e-5 relative, far below the 0.5 % to t = 998."""
    return abs(sigma - sigma_max) <= 1e-5 * sigma_max


def one_step_model_sampling(base: Any) -> Any:
    """A copy of ``model_sampling`` whose KSampler start at ``sigma_999`` is :func:`one_step_start` (no noise).

    KSAMPLER passes ``max_denoise`` explicitly only when it noises the starting latent; other callers and other
    first sigmas keep ComfyUI's own noising.
    """
    parent = type(base)

    class SSPIROneStepStart(parent):  # type: ignore[misc, valid-type]
        def noise_scaling(self, sigma, noise, latent_image, max_denoise=UNSET):  # noqa: ANN001, ANN202
            if max_denoise is UNSET:
                return super().noise_scaling(sigma, noise, latent_image)
            s, top = float(torch.as_tensor(sigma).flatten()[0]), float(self.sigmas[-1])
            if is_one_step_sigma(s, top):
                return one_step_start(latent_image, s)
            log.warning(
                "SSP-IR: one-step weights (trained at t=999 only), but this sampling starts at sigma %.4g, "
                "not sigma_999 = %.4g: the LQ latent gets ComfyUI's noise and the image will be poor. Use "
                "KSampler with 1 step, cfg 1, denoise 1 and scheduler simple (or normal, karras).",
                s,
                top,
            )
            return super().noise_scaling(sigma, noise, latent_image, max_denoise)

    return retyped_sampling(base, SSPIROneStepStart)


def add_one_step(clone: Any, patches: dict[str, tuple[torch.Tensor, torch.Tensor, float]], paper: bool) -> None:
    """Add the LoRA patches (strength 1) and, with ``paper``, the one-step start to ``clone``."""
    from comfy.weight_adapter import LoRAAdapter

    adapters = {k: LoRAAdapter(set(), (b, a, alpha, None, None, None)) for k, (b, a, alpha) in patches.items()}
    added = clone.add_patches(adapters, 1.0)
    if len(added) != len(adapters):  # checked by one_step_patches; a MODEL that changed in between
        raise InputError(
            f"Apply SSP-IR: only {len(added)} of the one-step LoRA's {len(adapters)} layers found in the MODEL"
        )
    if paper:
        clone.add_object_patch("model_sampling", one_step_model_sampling(clone.get_model_object("model_sampling")))
