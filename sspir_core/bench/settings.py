"""What a bench run measures (:class:`BenchSettings`) and the random-weight models it measures on.

Configs: ``tiny`` (the tiny-random preset), ``tiny-medium`` (SD1.5's 4-level layout at about 1/5 of its
width) and ``sd15`` (full size). Timings do not depend on the weights, so no files are needed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..restore.pipeline import RestorePipeline

CONFIGS: tuple[str, ...] = ("tiny", "tiny-medium", "sd15")
CAPTION = "a photo of a red brick house with a wooden door, trees and a blue sky"

# Between the tiny preset and SD1.5: same 4-level layout as SD1.5, ~1/5 of its width.
TINY_MEDIUM_UNET: dict[str, Any] = {
    "block_out_channels": [64, 128, 256, 256],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "attention_head_dim": 4,  # SD1.x's quirk: this number is the head count
    "cross_attention_dim": 256,
    "sample_size": 64,
}
TINY_MEDIUM_CLIP_DIM = 128


@dataclass
class BenchSettings:
    """What one bench run measures; the CLI fills it from its flags."""

    config: str = "tiny-medium"
    device: str = "cpu"
    dtype: str = "fp32"
    size: int = 512  # output px of the step and priors measurements
    steps: int = 50  # the run the priors are compared with
    step_steps: int = 2  # denoising steps per timed repeat of the step measurement
    repeats: int = 5
    estimate_run: bool = False  # estimate the run as steps x per-step time instead of timing it
    sizes: Sequence[int] = (512, 1024, 2048)
    memory_steps: int = 2
    tile: int = 64
    tile_overlap: int = 16
    vae_tile: int = 512
    image: bool = False  # also time a whole restore (priors + steps + decode + colour fix)
    image_steps: int = 50
    cfg: float = 7.5
    seed: int = 0
    threads: int | None = None  # torch CPU threads (1 is steadiest when other processes share the cores)
    output_bits: int | None = 8  # memory runs: 8/16 = the streamed integer tail the CLI writes; None = float
    compile: bool = False  # torch.compile the ControlNet + UNet (falls back to eager with a message)
    ablate: bool = False  # step part: also time the sampler with each fast path left out
    memory_method: str = "tensors"  # CPU memory runs: "tensors" (allocator accounting) or "rss" (what the OS sees)
    # native part (`--parts native`, bench/native.py): output px (LQ size/4) and steps, None = the device's
    # defaults there; the three files both routes load (all or none; none = the random native demo files)
    native_size: int | None = None
    native_steps: int | None = None
    native_checkpoint: str | None = None
    native_sspir: str | None = None
    native_clip_vision: str | None = None
    native_order: str | None = None  # "interleaved" (both servers up, prompts alternating) or "sequential"


# Extra parts other modules plug in (e.g. a training step): name -> (measure(settings, pipe), report lines).
# ``measure`` gets the bench pipeline when a built-in part built one, else None (build what you need), and
# returns plain data; ``lines`` turns that data into report lines. Register, then name the part in --parts.
ExtraPart = tuple[
    Callable[["BenchSettings", "RestorePipeline | None"], dict[str, Any]], Callable[[dict[str, Any]], list[str]]
]
EXTRA_PARTS: dict[str, ExtraPart] = {}
# Their optional pieces of the one-line summary: name -> summary(data) (a part without one is only in the table).
EXTRA_SUMMARIES: dict[str, Callable[[dict[str, Any]], str]] = {}


# ---------------------------------------------------------------------------------------------- models


def model_configs(config: str) -> tuple[Any, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(``build_models`` arguments, text, VAE, vision configs) of a named size: the one home of the sizes that the
    bench and the CUDA dry run build."""
    from ..weights import CLIP_VISION_CONFIG, sd_config_dir
    from ..weights.bundled_configs import read_json

    if config == "sd15":
        sd_dir = sd_config_dir("sd15")
        text = {k: v for k, v in read_json(sd_dir / "text_encoder" / "config.json").items() if not k.startswith("_")}
        vae = {k: v for k, v in read_json(sd_dir / "vae" / "config.json").items() if not k.startswith("_")}
        return {"base": "sd15"}, text, vae, read_json(CLIP_VISION_CONFIG)
    if config == "tiny-medium":
        text = {
            "vocab_size": 49408,
            "hidden_size": 256,
            "intermediate_size": 1024,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "projection_dim": 256,
        }
        vae = {
            "down_block_types": ["DownEncoderBlock2D"] * 4,
            "up_block_types": ["UpDecoderBlock2D"] * 4,
            "block_out_channels": [16, 32, 64, 64],
            "layers_per_block": 1,
            "latent_channels": 4,
            "norm_num_groups": 8,
            "scaling_factor": 0.18215,
            "sample_size": 256,
        }
        vision = {
            "hidden_size": TINY_MEDIUM_CLIP_DIM,
            "intermediate_size": 4 * TINY_MEDIUM_CLIP_DIM,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "image_size": 224,
            "patch_size": 14,
            "hidden_act": "quick_gelu",
        }
        return {"unet_config": TINY_MEDIUM_UNET, "clip_dim": TINY_MEDIUM_CLIP_DIM}, text, vae, vision
    if config == "tiny":
        from ..demo import presets as t

        d, c = t.TINY_UNET["cross_attention_dim"], t.TINY_CLIP_DIM
        text = {
            "vocab_size": 49408,
            "hidden_size": d,
            "intermediate_size": 2 * d,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "projection_dim": d,
        }
        vision = {
            "hidden_size": c,
            "intermediate_size": 2 * c,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": t.TINY_CLIP_IMAGE,
            "patch_size": 14,
            "hidden_act": "quick_gelu",
        }
        return {"unet_config": t.TINY_UNET, "clip_dim": c}, text, dict(t.TINY_VAE), vision
    raise ValueError(f"unknown config {config!r}")


def build_bench_pipeline(
    config: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> RestorePipeline:
    """A restore pipeline with random weights at a named size (no files needed: timings do not depend on weights)."""
    if config == "tiny":
        from ..demo.presets import tiny_random_pipeline

        return tiny_random_pipeline(device=device, dtype=dtype, seed=seed)
    if config not in CONFIGS:
        raise ValueError(f"unknown config {config!r}; choose one of {', '.join(CONFIGS)}")
    from ..demo.presets import random_pipeline
    from ..models.build import build_models

    device = torch.device(device)
    torch.manual_seed(seed)
    model_args, text_cfg, vae_cfg, vision = model_configs(config)
    models = build_models(**model_args, device=device)
    return random_pipeline(models, text_cfg, vae_cfg, vision, device, dtype)


def build_stock_pair(pipe: RestorePipeline) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A stock diffusers UNet + ControlNet from the same UNet config as ``pipe`` (random weights): the baseline."""
    from diffusers import ControlNetModel

    from ..models.build import stock_unet_from_config

    with torch.device(pipe.device):
        unet = stock_unet_from_config(dict(pipe.models.unet.config))
        controlnet = ControlNetModel.from_unet(unet)
    for m in (unet, controlnet):
        m.eval().requires_grad_(False)
        if pipe.dtype != torch.float32:  # a no-op cast would only make diffusers warn
            m.to(dtype=pipe.dtype)
    return unet, controlnet
