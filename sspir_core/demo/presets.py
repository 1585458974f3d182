"""`tiny-random`: every component at toy size with random weights, so the whole path runs anywhere in seconds.

The outputs are noise-like: the weights are untrained. With ``sspir`` it loads a tiny-config SSP-IR
checkpoint (such as the trainer's smoke runs write) and sizes the text and CLIP encoders to fit it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.build import SSPIRModels, build_models, stock_unet_from_config
from ..restore.pipeline import RestorePipeline
from ..weights.checkpoint import load_sspir_weights, read_compact_metadata

# The official parity fixture's shape: an SD1.5-like UNet with 3 levels.
TINY_UNET = {
    "block_out_channels": [24, 48, 48],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "attention_head_dim": 2,
    "cross_attention_dim": 32,
    "sample_size": 8,
}
TINY_CLIP_DIM = 64
TINY_VAE: dict[str, Any] = {
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 16, 16, 16],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 4,
    "scaling_factor": 0.18215,
    "sample_size": 64,
}
TINY_CLIP_IMAGE = 224  # 16x16 = 256 patch tokens, as CLIP ViT-L/14-224


def fill_random(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Give every parameter a fresh value drawn from ``generator`` (the caller's, never torch's global one).

    Modules are built with empty (meta) parameters and filled here, so making a random model neither seeds
    nor advances torch's global RNG. Norm layers start as identity, embeddings as N(0, 0.02), every other
    weight and bias uniform in +-1/sqrt(fan_in), like torch's default Linear/Conv init; nothing starts at zero,
    so every path (ControlNet residuals included) moves the output.
    """
    for mod in module.modules():
        for name, param in list(mod.named_parameters(recurse=False)):
            value = torch.empty(param.shape, dtype=torch.float32)
            if isinstance(mod, (nn.LayerNorm, nn.GroupNorm)):
                value.fill_(1.0 if name == "weight" else 0.0)
            elif isinstance(mod, nn.Embedding) or param.ndim == 1 and not name.endswith("bias"):
                value.normal_(0.0, 0.02, generator=generator)
            else:
                weight = getattr(mod, "weight", None)
                fan_in = (weight if isinstance(weight, torch.Tensor) and weight.ndim > 1 else param)[0].numel()
                bound = 1.0 / max(1, fan_in) ** 0.5
                value.uniform_(-bound, bound, generator=generator)
            mod._parameters[name] = nn.Parameter(value.to(param.dtype), requires_grad=param.requires_grad)
    return module


@contextlib.contextmanager
def empty_weights() -> Iterator[None]:
    """Build modules with meta parameters (buffers such as position ids stay real). A few constructors draw
    throw-away values from the global RNG before the parameter goes to meta (transformers' CLIP class
    embedding); fork_rng puts the global CPU state back as it was, so building leaves no trace in it."""
    from accelerate import init_empty_weights

    with torch.random.fork_rng(devices=[]), init_empty_weights(include_buffers=False):
        yield


def tiny_models(
    sspir: str | Path | None = None,
    seed: int = 0,
    unet_config: dict[str, Any] | None = None,
    clip_dim: int = TINY_CLIP_DIM,
) -> SSPIRModels:
    """Tiny SSP-IR networks: random from ``seed`` (the ControlNet starts as a copy of the UNet encoder, as the
    official trainer does), or the weights in ``sspir``. ``unet_config``/``clip_dim`` size the random ones
    (default the tiny preset's)."""
    if sspir is None:
        with empty_weights():
            models = build_models(unet_config=unet_config or TINY_UNET, clip_dim=clip_dim)
        generator = torch.Generator().manual_seed(seed)
        for m in (models.unet, models.controlnet, models.refine):
            fill_random(m, generator)
        copy = {k: v for k, v in models.unet.state_dict().items() if k in models.controlnet.state_dict()}
        models.controlnet.load_state_dict(copy, strict=False)
        return models
    path = Path(sspir)
    if path.is_dir():
        return load_sspir_weights(path)
    unet_config = read_compact_metadata(path)["unet_config"]
    return load_sspir_weights(path, sd_unet=stock_unet_from_config(unet_config))


def random_pipeline(
    models: SSPIRModels,
    text_config: dict[str, Any],
    vae_config: dict[str, Any],
    vision_config: dict[str, Any],
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> RestorePipeline:
    """Wrap SSP-IR models with random SD/CLIP parts built from configs (and the real tokenizer).

    The random values come from a generator seeded with ``seed``; torch's global RNG is left alone.
    """
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

    from ..weights import ClipVisionEncoder, load_tokenizer, sd_config_dir

    with empty_weights():
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
        vae = AutoencoderKL.from_config(vae_config)
        tower = CLIPVisionModel(CLIPVisionConfig(**vision_config))
    generator = torch.Generator().manual_seed(seed)
    for m in (text_encoder, vae, tower):
        fill_random(m, generator)
    clip = ClipVisionEncoder(
        tower,
        "transformers",
        int(vision_config["image_size"]),
        int(vision_config["patch_size"]),
        int(vision_config["hidden_size"]),
    )
    tokenizer = load_tokenizer(sd_config_dir("sd15") / "tokenizer")
    return RestorePipeline(models, vae, text_encoder, tokenizer, clip, device=device, dtype=dtype, untrained=True)


def tiny_random_pipeline(
    sspir: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> RestorePipeline:
    """A complete restore pipeline at toy size (random SD parts; SSP-IR parts random or from ``sspir``)."""
    models = tiny_models(sspir, seed)
    text_dim = models.unet.config.cross_attention_dim
    clip_dim = models.refine.config["clip_dim"]
    text = {
        "vocab_size": 49408,
        "hidden_size": text_dim,
        "intermediate_size": 2 * text_dim,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 77,
        "projection_dim": text_dim,
    }
    vision = {
        "hidden_size": clip_dim,
        "intermediate_size": 2 * clip_dim,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": TINY_CLIP_IMAGE,
        "patch_size": 14,
        "hidden_act": "quick_gelu",
    }
    return random_pipeline(models, text, TINY_VAE, vision, device, dtype, seed=seed + 1)
