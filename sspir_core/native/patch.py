"""SSP-IR's own weights without the SD UNet, and how they run beside an LDM-layout UNet.

The native route leaves the user's UNet as it is and adds what SSP-IR trains: the ControlNet (with the
Processor), the Refine layer and the UNet's image/pixel attentions. :class:`NativePatch` holds exactly those
(for SD1.5 about 1.0B parameters, 1.9 GiB in fp16; the SD weights of an official ``checkpoint-N/unet`` are not
kept) and runs them on tensors handed over by the host's hooks.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..models import RefineLayer, patch_unet
from ..models.blocks import flatten_context, widen
from ..models.build import stock_unet_from_config
from ..models.controlnet import SSPIRControlNet
from ..models.unet import is_prior_attention_key
from ..weights.sspir_file import SSPIRFile, check_keys, on_meta
from .layout import HookSite, expected_ldm_config, hook_sites
from .one_step import OneStepLora


def _module_name(key: str) -> str:
    return key.replace(".", "__")  # ModuleDict names cannot hold dots


class NativePatch(nn.Module):
    """ControlNet + Refine layer + the UNet's SSP-IR attentions (keyed by their diffusers names).

    ``one_step``: a one-step checkpoint's UNet LoRA (None for a 50-step one). It is not a parameter of this
    module: it belongs on the user's SD UNet, where Apply SSP-IR adds it as weight patches.
    """

    def __init__(
        self,
        controlnet: SSPIRControlNet,
        refine: RefineLayer,
        attentions: Mapping[str, nn.Module],
        unet_config: Mapping[str, Any],
        base: str,
        one_step: OneStepLora | None = None,
    ) -> None:
        super().__init__()
        self.one_step = one_step
        self.controlnet = controlnet
        self.refine = refine
        self.attentions = nn.ModuleDict({_module_name(k): v for k, v in attentions.items()})
        self.unet_config = dict(unet_config)
        self.base = base
        self.sites: list[HookSite] = hook_sites(self.unet_config)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def expected_ldm_config(self) -> dict[str, Any]:
        return expected_ldm_config(self.unet_config)

    def attention(self, key: str) -> nn.Module:
        return self.attentions[_module_name(key)]

    # ------------------------------------------------------------------ once per image

    def image_embedding(self, clip_tokens: torch.Tensor) -> torch.Tensor:
        """Refine layer on CLIP patch tokens ``[B, 256, D]`` -> ``[B, 256, 512]``."""
        return self.refine(clip_tokens.to(self.dtype))

    def structure(self, lq: torch.Tensor, tile: int | None = None) -> torch.Tensor:
        """Processor features of the (padded, output-size) LQ ``[B, 3, H, W]`` in [0, 1]; ``tile`` px bounds memory."""
        device = next(self.parameters()).device
        if tile is not None:
            feats, _ = self.controlnet.encode_condition(lq, False, tile=tile, cast=(device, self.dtype))
        else:
            feats, _ = self.controlnet.encode_condition(lq.to(device, self.dtype), False)
        return feats

    # ------------------------------------------------------------------ every model call

    def control(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        image_emb: torch.Tensor,
        features: torch.Tensor,
        scale: float,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The ControlNet on the model input ``x`` (``k * B`` rows: k conditionings of a B-image batch).

        ``image_emb`` and ``features`` hold B rows and are the same for every conditioning (CFG acts on the
        caption only). Returns the scaled down residuals (skip order, conv_in first) and the mid residual,
        in ``x``'s dtype.
        """
        dtype = self.dtype
        rows = x.shape[0]
        out = self.controlnet(
            x.to(dtype),
            t,
            context.to(dtype),
            processor_features=widen(features.to(x.device, dtype), rows),
            conditioning_scale=scale,
            image_encoder_hidden_states=widen(image_emb.to(x.device, dtype), rows),
            return_rgbs=False,
        )
        return [d.to(x.dtype) for d in out.down_residuals], out.mid_residual.to(x.dtype)

    def attend(self, key: str, h: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """One SSP-IR attention (a whole Transformer2DModel with its residual) on ``h`` ``[N, C, H, W]``.

        ``context``: the image embedding ``[B, 256, 512]`` (repeated to N rows) or a ControlNet residual
        ``[N, C', H, W]`` (flattened to tokens).
        """
        dtype = self.dtype
        if context.ndim == 4:
            context = flatten_context(context)
        context = widen(context.to(h.device, dtype), h.shape[0])
        out = self.attention(key)(h.to(dtype), encoder_hidden_states=context, return_dict=False)[0]
        return out.to(h.dtype)


def _attention_modules(unet_config: Mapping[str, Any]) -> dict[str, nn.Module]:
    """The SSP-IR attentions of a UNet with this config, on the meta device (nothing allocated)."""
    unet = on_meta(lambda: patch_unet(stock_unet_from_config(dict(unet_config))))
    return {site.key: unet.get_submodule(site.key) for site in hook_sites(unet_config)}


def _load_attentions(
    unet_config: Mapping[str, Any], state: Mapping[str, torch.Tensor], source: str, base: str
) -> dict[str, nn.Module]:
    modules = _attention_modules(unet_config)
    holder = nn.ModuleDict({_module_name(k): m for k, m in modules.items()})
    expected = {k: v for k, v in holder.state_dict().items()}
    renamed = {}
    for k, v in state.items():
        for key in modules:
            if k.startswith(key + "."):
                renamed[_module_name(key) + k[len(key) :]] = v
                break
        else:
            renamed[k] = v  # reported as unexpected
    check_keys(expected, renamed, source, "UNet attentions", base)
    holder.load_state_dict(renamed, strict=True, assign=True)
    return modules


def load_native_patch(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> NativePatch:
    """Load SSP-IR weights for the native route: a compact ``.safetensors`` or an official ``checkpoint-N/``.

    For an official folder only the SSP-IR parts of ``unet/`` are kept (its SD weights come from the user's
    MODEL). A one-step checkpoint's LoRA (``lora.*`` tensors, or ``lora/`` + ``one_step.json``) is kept as
    :attr:`NativePatch.one_step`. Errors name the file and what does not fit.
    """
    path = Path(path)
    if path.is_dir() and not (path / "refine").is_dir():
        raise CheckpointError(
            f"{path}: no 'refine/' folder; point at a checkpoint-N/ folder written by SSP-IR's "
            "train.py (it holds unet/, controlnet/ and refine/)"
        )
    file = SSPIRFile(path)
    base, unet_config = file.base, file.unet_config
    unet = file.part("unet")
    if file.official:  # the folder's whole UNet: only its SSP-IR attentions are kept (SD weights: the user's MODEL)
        unet.state = {k: v for k, v in unet.state.items() if is_prior_attention_key(k)}
    attentions = _load_attentions(unet_config, unet.state, unet.source, base)
    del unet
    controlnet, refine = file.controlnet(base), file.refine(base)
    found = file.one_step()
    one_step = None if found is None else OneStepLora(found.spec, found.tensors, found.lora_source)
    patch = NativePatch(controlnet, refine, attentions, unet_config, base, one_step).eval().requires_grad_(False)
    return patch.to(device=device, dtype=dtype) if dtype is not None else patch.to(device=device)
