"""One-step SSP-IR (an extension of the paper, after OSEDiff): constants, the x0 formula and the UNet LoRA.

OSEDiff (arXiv 2406.08177; ``cswry/OSEDiff`` ``osediff.py``) feeds the VAE latent of the LQ image to the UNet
at the fixed timestep 999, without adding noise, and takes the scheduler's clean-latent estimate as the output:
``x0 = (z - sqrt(1 - abar_999) * eps) / sqrt(abar_999)`` (its ``noise_scheduler.step`` with one timestep, whose
previous alpha is 1). The UNet carries LoRA adapters on the layers its ``initialize_unet`` greps for.
One-step SSP-IR keeps the three SSP-IR priors (caption, CLIP tokens through the Refine layer, the Processor's
structure features through the ControlNet) and adds that LoRA to the patched UNet.

This module imports no diffusers and no peft at import time (the ComfyUI native route and the nodes read the
constants); peft is imported by the functions that inject adapters.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .sd_schedule import SD_SCHEDULE

MULTI_STEP = "multi-step"
ONE_STEP = "one-step"
MODES = (MULTI_STEP, ONE_STEP)
ONE_STEP_TIMESTEP = 999
"""``cswry/OSEDiff`` ``osediff.py`` (OSEDiff_gen / OSEDiff_test): ``self.timesteps = torch.tensor([999])``."""

# cswry/OSEDiff osediff.py initialize_unet: a weight whose name holds one of these (and not "bias"/"norm")
# gets a LoRA. We apply the same rule to the SD part of the patched UNet; the SSP-IR attentions are trained whole.
LORA_PATTERNS = (
    "to_k",
    "to_q",
    "to_v",
    "to_out.0",
    "conv",
    "conv1",
    "conv2",
    "conv_in",
    "conv_shortcut",
    "conv_out",
    "proj_out",
    "proj_in",
    "ff.net.2",
    "ff.net.0.proj",
)
LORA_RANK = 4  # cswry/OSEDiff train_osediff.py --lora_rank default 4
LORA_ALPHA = 8  # OSEDiff leaves LoraConfig.lora_alpha at peft's default, 8 (scaling alpha/r = 2)
ADAPTER = "one_step"


@dataclass(frozen=True)
class LoraSpec:
    """What a one-step checkpoint's LoRA is: rank, alpha and the module names it sits on."""

    rank: int
    alpha: float
    targets: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "alpha": self.alpha, "targets": list(self.targets)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoraSpec:
        return cls(int(data["rank"]), float(data["alpha"]), tuple(data["targets"]))


def alpha_bar(scheduler_config: dict[str, Any] | None, timestep: int = ONE_STEP_TIMESTEP) -> float:
    """abar_t of SD's training schedule (or the one in ``scheduler_config``), in float64."""
    cfg = {**SD_SCHEDULE, **(scheduler_config or {})}
    n = int(cfg["num_train_timesteps"])
    if cfg["beta_schedule"] == "scaled_linear":
        betas = torch.linspace(cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, n, dtype=torch.float64) ** 2
    elif cfg["beta_schedule"] == "linear":
        betas = torch.linspace(cfg["beta_start"], cfg["beta_end"], n, dtype=torch.float64)
    else:
        raise ValueError(
            f"one-step SSP-IR supports the linear and scaled_linear schedules, not {cfg['beta_schedule']!r}"
        )
    return float(torch.cumprod(1 - betas, 0)[timestep])


def one_step_sigma(scheduler_config: dict[str, Any] | None = None) -> tuple[int, float]:
    """(timestep, sigma) of the one-step evaluation, for k-diffusion style samplers (ComfyUI's native route).

    ``sigma = sqrt((1 - abar) / abar)`` at t = 999; a sampler that scales its input by ``1/sqrt(sigma^2 + 1)``
    then hands the UNet ``sqrt(abar) * z``, so the native route must feed the LQ latent unscaled (the UNet sees
    ``z`` itself in training) and take ``denoised = (z - sqrt(1 - abar) eps) / sqrt(abar)``.
    """
    a = alpha_bar(scheduler_config)
    return ONE_STEP_TIMESTEP, math.sqrt((1 - a) / a)


def predict_x0(
    sample: torch.Tensor, model_output: torch.Tensor, abar: float, prediction_type: str = "epsilon"
) -> torch.Tensor:
    """The clean latent from the UNet output at a timestep with cumulative alpha ``abar`` (DDPM's formula)."""
    a, s = math.sqrt(abar), math.sqrt(1 - abar)
    if prediction_type == "epsilon":
        return (sample - s * model_output) / a
    if prediction_type == "v_prediction":
        return a * sample - s * model_output
    raise ValueError(f"unsupported prediction_type {prediction_type!r} (epsilon or v_prediction)")


# ---------------------------------------------------------------- LoRA (peft)


def lora_targets(unet: nn.Module) -> tuple[str, ...]:
    """OSEDiff's LoRA target modules in ``unet``, leaving out the SSP-IR attentions (trained in full)."""
    from .unet import is_prior_attention_key

    out = []
    for name, _ in unet.named_parameters():
        if "bias" in name or "norm" in name or is_prior_attention_key(name) or "lora_" in name:
            continue
        if any(p in name for p in LORA_PATTERNS):
            out.append(name.removesuffix(".weight").replace(".base_layer", ""))
    return tuple(dict.fromkeys(out))


def _peft() -> Any:
    try:
        import peft
    except ImportError as e:
        from ..errors import InputError

        raise InputError(
            "one-step SSP-IR needs peft for its LoRA: pip install 'comfyui-sspir[train]' (or pip install peft)"
        ) from e
    return peft


def add_lora(
    unet: nn.Module, spec: LoraSpec, generator: torch.Generator | None = None, adapter: str = ADAPTER
) -> list[nn.Parameter]:
    """Inject a LoRA adapter on ``spec.targets`` (A Gaussian, B zero, as OSEDiff's ``init_lora_weights="gaussian"``).

    A is drawn from ``generator`` (normal, std 1/r: peft's Gaussian init) so building never touches torch's global RNG.
    Returns the LoRA parameters.
    """
    peft = _peft()
    config = peft.LoraConfig(
        r=spec.rank, lora_alpha=spec.alpha, target_modules=list(spec.targets), init_lora_weights=False
    )
    peft.inject_adapter_in_model(config, unet, adapter_name=adapter)
    params = []
    for name, p in unet.named_parameters():
        if f"lora_A.{adapter}." in name:
            with torch.no_grad():
                value = torch.randn(p.shape, generator=generator, dtype=torch.float32, device="cpu") / spec.rank
                p.copy_(value.to(p.device, p.dtype))
            params.append(p)
        elif f"lora_B.{adapter}." in name:
            with torch.no_grad():
                p.zero_()
            params.append(p)
    return params


def random_lora(
    unet: nn.Module, spec: LoraSpec, generator: torch.Generator, b_std: float = 0.0
) -> dict[str, torch.Tensor]:
    """LoRA tensors in the saved layout (``<module>.lora_A.weight``/``lora_B``) drawn without peft.

    A as :func:`add_lora` draws it (normal, std 1/r); B normal with ``b_std`` (0: add_lora's zero B). A conv
    target gets peft's conv layout: A a conv of the layer's kernel to r channels, B a 1x1 conv back. For writing
    files (demo models) where peft, a training dependency, is not installed.
    """
    out = {}
    for name in spec.targets:
        w = unet.get_submodule(name).weight
        a_shape = (spec.rank, *w.shape[1:])
        b_shape = (w.shape[0], spec.rank) + ((1, 1) if w.ndim == 4 else ())
        out[f"{name}.lora_A.weight"] = torch.randn(a_shape, generator=generator) / spec.rank
        out[f"{name}.lora_B.weight"] = torch.randn(b_shape, generator=generator) * b_std
    return out


def lora_state_dict(module: nn.Module, adapter: str = ADAPTER) -> dict[str, torch.Tensor]:
    """``<module>.lora_A.weight`` / ``<module>.lora_B.weight`` for the adapter (no peft naming inside)."""
    out = {}
    for n, t in module.state_dict().items():
        if f".lora_A.{adapter}." in n or f".lora_B.{adapter}." in n:
            out[n.replace(f".{adapter}.", ".")] = t
    return out


def load_lora_state_dict(
    module: nn.Module, state: dict[str, torch.Tensor], source: str, adapter: str = ADAPTER
) -> None:
    from ..errors import CheckpointError

    own = {
        n.replace(f".{adapter}.", "."): t
        for n, t in module.state_dict().items()
        if f".lora_A.{adapter}." in n or f".lora_B.{adapter}." in n
    }
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{source}: the LoRA does not fit the UNet ({len(missing)} missing, {len(unexpected)} "
            f"unexpected, {len(shapes)} other shapes; first: {(missing + unexpected + shapes)[:3]})"
        )
    with torch.no_grad():
        for k, t in own.items():
            t.copy_(state[k].to(t.device, t.dtype))


def base_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's state without LoRA tensors and with peft's ``.base_layer`` removed from the names."""
    return {n.replace(".base_layer.", "."): t for n, t in module.state_dict().items() if ".lora_" not in n}


def merge_lora_weights(module: nn.Module, spec: LoraSpec, state: dict[str, torch.Tensor], source: str) -> None:
    """Add a saved LoRA into ``module``'s weights in place: ``W += (alpha / r) * B @ A`` (no peft needed).

    For a conv target, A is a k x k conv to r channels and B a 1x1 conv back (peft's layout), so the
    delta is ``B[:, :, 0, 0]`` applied over A's output channels. Inference runs the plain layers.
    """
    from ..errors import CheckpointError

    scale = spec.alpha / spec.rank
    for name in spec.targets:
        try:
            layer = module.get_submodule(name)
            a, b = state[f"{name}.lora_A.weight"].float(), state[f"{name}.lora_B.weight"].float()
        except (AttributeError, KeyError) as e:
            raise CheckpointError(f"{source}: the LoRA does not fit the UNet (no {e})") from e
        w = layer.weight
        delta = b.flatten(1) @ a.flatten(1) if w.ndim == 2 else torch.einsum("or,rikl->oikl", b[:, :, 0, 0], a)
        if delta.shape != w.shape:
            raise CheckpointError(f"{source}: LoRA of {name} gives {tuple(delta.shape)}, the layer is {tuple(w.shape)}")
        with torch.no_grad():
            w.add_((scale * delta).to(w.device, w.dtype))


def set_adapters_enabled(module: nn.Module, enabled: bool) -> None:
    """Switch every LoRA layer of ``module`` on or off (the VSD's fake score = on, the real SD score = off)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for m in module.modules():
        if isinstance(m, BaseTunerLayer):
            m.enable_adapters(enabled)


def count_layers(modules: Iterable[nn.Module]) -> int:
    """Linear/conv layers in ``modules``: the depth used to bound float rounding in tests and docs."""
    return sum(isinstance(m, (nn.Linear, nn.Conv2d)) for mod in modules for m in mod.modules())
