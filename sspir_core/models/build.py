"""The SSP-IR model set (UNet, ControlNet, Refine layer) and how to build it for a base."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from . import RefineLayer, SSPIRControlNet, SSPIRUNet, make_controlnet, patch_unet
from .blocks import heads_per_level, per_level
from .config_keys import init_kwargs
from .controlnet import controlnet_config_from_unet, controlnet_from_unet

BASES: tuple[str, ...] = ("sd15", "sd21")
CUSTOM_BASE = "custom"

# Config entries that decide parameter shapes: two UNets agreeing on these hold the same keys and shapes.
_STRUCTURE_KEYS = (
    "in_channels",
    "out_channels",
    "block_out_channels",
    "down_block_types",
    "up_block_types",
    "layers_per_block",
    "cross_attention_dim",
    "use_linear_projection",
    "norm_num_groups",
)


def base_unet_config(base: str) -> dict[str, Any]:
    """The stock diffusers UNet config of an SD base, shipped with the package."""
    if base not in BASES:
        raise ValueError(f"unknown base {base!r}; choose one of {', '.join(BASES)}")
    text = resources.files("sspir_core").joinpath("configs", base, "unet.json").read_text()
    return json.loads(text)


def structure(config: dict[str, Any] | Any) -> dict[str, Any]:
    """The shape-deciding part of a UNet config, normalised (heads and depth per level)."""
    cfg = dict(config)
    out = {k: (list(cfg[k]) if isinstance(cfg.get(k), (list, tuple)) else cfg.get(k)) for k in _STRUCTURE_KEYS}
    out["use_linear_projection"] = bool(out["use_linear_projection"])
    out["heads"] = heads_per_level(cfg)
    out["depth"] = per_level(cfg.get("transformer_layers_per_block", 1), len(cfg["block_out_channels"]))
    return out


def infer_base(unet_config: dict[str, Any] | Any) -> str:
    """'sd15', 'sd21' or 'custom' (e.g. a tiny test config), from the UNet config's shapes."""
    s = structure(unet_config)
    for base in BASES:
        if structure(base_unet_config(base)) == s:
            return base
    return CUSTOM_BASE


def describe_base(unet_config: dict[str, Any] | Any) -> str:
    cfg = dict(unet_config)
    channels = list(cfg.get("block_out_channels", []))
    return f"cross_attention_dim={cfg.get('cross_attention_dim')}, block_out_channels={channels}"


def stock_unet_from_config(config: dict[str, Any]) -> UNet2DConditionModel:
    """A stock diffusers UNet from a config, ignoring keys diffusers does not know (official extras, private keys)."""
    return UNet2DConditionModel.from_config(init_kwargs(UNet2DConditionModel, config))


@dataclass
class SSPIRModels:
    """The three networks SSP-IR adds to or trains on top of Stable Diffusion."""

    unet: SSPIRUNet
    controlnet: SSPIRControlNet
    refine: RefineLayer
    base: str = CUSTOM_BASE
    mode: str = "multi-step"  # or "one-step" (see .one_step); set by the loaders from the checkpoint's metadata
    lora: Any = None  # the one-step UNet LoRA (a .one_step.LoraSpec) while it is unmerged, else None

    def named_modules_(self) -> Iterator[tuple[str, nn.Module]]:
        yield "unet", self.unet
        yield "controlnet", self.controlnet
        yield "refine", self.refine

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> SSPIRModels:
        for _, m in self.named_modules_():
            move_module(m, device, dtype)
        return self

    def eval(self) -> SSPIRModels:
        for _, m in self.named_modules_():
            m.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What SSP-IR trains: the whole ControlNet (with the Processor), the UNet's new attentions, the Refine
        layer."""
        return [*self.controlnet.parameters(), *self.unet.sspir_parameters(), *self.refine.parameters()]

    def set_trainable(self) -> list[nn.Parameter]:
        """Freeze the SD UNet weights, unfreeze the SSP-IR parts; returns the trainable parameters."""
        for _, m in self.named_modules_():
            m.requires_grad_(False)
        params = self.trainable_parameters()
        for p in params:
            p.requires_grad_(True)
        return params


def move_module(module: nn.Module, device: str | torch.device | None, dtype: torch.dtype | None = None) -> None:
    """Move/cast a module, skipping no-ops.

    Calls ``torch.nn.Module.to`` itself: diffusers' ``ModelMixin.to`` warns about fp32-pinned submodules on
    every cast (none of these models have any), and silencing that would change diffusers' global log level.
    Quantized models keep their own ``.to`` and its checks.
    """
    params = list(module.parameters())
    same_device = device is None or all(p.device == torch.device(device) for p in params)
    same_dtype = dtype is None or all(p.dtype == dtype for p in params)
    if same_device and same_dtype:
        return
    to = module.to if getattr(module, "is_quantized", False) else nn.Module.to.__get__(module)
    to(device=device, dtype=dtype) if dtype is not None else to(device=device)


def build_models(
    base: str = "sd15",
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    unet_config: dict[str, Any] | None = None,
    clip_dim: int = 1024,
    init_controlnet_from_unet: bool = True,
) -> SSPIRModels:
    """Build SSP-IR at full size for ``base`` (random weights); ``device="meta"`` allocates nothing.

    ``unet_config`` overrides the bundled base config (tiny test models). The ControlNet starts as a
    copy of the UNet encoder, as in the official trainer (skipped on the meta device).
    """
    cfg = dict(unet_config) if unet_config is not None else base_unet_config(base)
    device = torch.device(device)
    with torch.device(device):
        unet = patch_unet(stock_unet_from_config(cfg))
        if init_controlnet_from_unet and device.type != "meta":
            controlnet = controlnet_from_unet(unet)
        else:
            controlnet = make_controlnet(controlnet_config_from_unet(cfg))
        refine = RefineLayer(clip_dim=clip_dim)
    models = SSPIRModels(unet, controlnet, refine, base if unet_config is None else infer_base(cfg))
    if dtype is not None:
        models.to(dtype=dtype)
    return models
