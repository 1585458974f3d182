"""Demo models that ComfyUI's own loaders accept, for the native route (Load Checkpoint, CLIP Vision Loader).

ComfyUI detects an SD1.5 UNet from its shapes but requires ``model_channels`` 320 and ``context_dim`` 768
(``comfy/supported_models.py`` ``SD15.unet_config``); the depth, the channel multipliers and the transformer
depth are read off the shapes (``comfy/model_detection.py``), so the smallest SD1.5 it takes is a 3-level UNet
of width 320 with one layer per level (:data:`NATIVE_UNET`, about 57M parameters). Its text encoder, VAE and
CLIP vision have fixed configs (the full CLIP-L text model ``sd1_clip_config.json``, the SD VAE, and CLIP
ViT-L/14 ``clip_vision_config_vitl.json``, chosen when ``vision_model.encoder.layers.22`` exists), so those
parts are full size with random weights. Everything is written in fp16: ComfyUI keeps text encoders and CLIP
vision in fp16 on the CPU, so both routes then compute with the same values. About 1.3 GB in all.

The same files load in the existing nodes (SSP-IR Model Loader, SSP-IR CLIP Vision Loader), so the two routes
can be compared on the same weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

SD_NAME = "sspir-native-demo-sd15.safetensors"
SSPIR_NAME = "sspir-native-demo.safetensors"
CLIP_VISION_NAME = "sspir-native-demo-clip-vit-l.safetensors"
ONE_STEP_NAME = "sspir-native-demo-one-step.safetensors"
"""The same SSP-IR weights as a one-step model (a random UNet LoRA that changes the output), for both routes."""
NATIVE_FILES = {
    "sd": ("checkpoints", SD_NAME),
    "sspir": ("sspir", SSPIR_NAME),
    "sspir_one_step": ("sspir", ONE_STEP_NAME),
    "clip_vision": ("clip_vision", CLIP_VISION_NAME),
}
NATIVE_UNET = {
    "block_out_channels": [320, 320, 320],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "layers_per_block": 1,
    "norm_num_groups": 32,
    "attention_head_dim": 8,
    "cross_attention_dim": 768,
    "sample_size": 64,
}
CLIP_DIM = 1024
FULL_FILES = {
    "sd": ("checkpoints", "sspir-native-random-sd15-full.safetensors"),
    "sspir": ("sspir", "sspir-native-random-sd15-full.safetensors"),
    "clip_vision": ("clip_vision", "sspir-native-random-clip-vit-l.safetensors"),
}
"""The same set at SD1.5's full size (:func:`write_native_demo_models` ``full_size``): for benchmarks on a GPU."""


def narrow_posterior(vae: torch.nn.Module, log_variance: float = -30.0) -> None:
    """Give a random VAE the narrow posterior a trained one has (log-variance -30: std 3e-7).

    The reference path samples the VAE posterior and ComfyUI's VAE Encode takes its mode; SD's VAE is nearly
    deterministic, a random one is not (its std is of the order of its mean), so without this the two routes
    would start from different latents for a reason that has nothing to do with SSP-IR.
    """
    conv = vae.quant_conv
    half = conv.out_channels // 2
    with torch.no_grad():
        conv.weight[half:] = 0
        conv.bias[half:] = log_variance


def write_native_demo_models(
    root: str | Path, seed: int = 0, overwrite: bool = False, full_size: bool = False
) -> dict[str, Path]:
    """Write the native demo set under ``root`` (``checkpoints/``, ``sspir/``, ``clip_vision/``); returns the paths.

    Existing files are kept unless ``overwrite``. Random values come from a generator seeded with ``seed``.
    ``full_size``: SD1.5's own UNet (860M parameters) and a full SSP-IR patch for it, named :data:`FULL_FILES`
    (about 4.7 GB in fp16, written in about a minute): timings and memory at the real size, no download.
    """
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

    from ..models.build import base_unet_config, stock_unet_from_config
    from ..models.unet import is_prior_attention_key
    from ..weights.bundled_configs import (
        CLIP_VISION_CONFIG,
        SD_CONFIGS_METADATA,
        component_config,
        read_json,
        sd_config_dir,
    )
    from ..weights.checkpoint import save_compact, save_tensors
    from ..weights.ldm_writer import clip_text_to_ldm, unet_to_ldm, vae_to_ldm
    from .model_files import json_config, one_step_model
    from .presets import empty_weights, fill_random, tiny_models

    root = Path(root)
    unet_config = base_unet_config("sd15") if full_size else NATIVE_UNET
    names = FULL_FILES if full_size else NATIVE_FILES
    paths = {kind: root / folder / name for kind, (folder, name) in names.items()}
    todo = {k: p for k, p in paths.items() if overwrite or not p.exists()}
    if not todo:
        return paths
    for p in todo.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed + 1)
    models = tiny_models(seed=seed, unet_config=unet_config, clip_dim=CLIP_DIM)
    models.base = "sd15"

    def half(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}

    if "sd" in todo:
        config_dir = sd_config_dir("sd15")
        with empty_weights():
            stock = stock_unet_from_config(unet_config)
            vae = AutoencoderKL.from_config(component_config(config_dir, "vae"))
            text = CLIPTextModel(CLIPTextConfig(**component_config(config_dir, "text_encoder")))
        for m in (vae, text):
            fill_random(m, generator)
        narrow_posterior(vae)
        stock.load_state_dict(
            {k: v for k, v in models.unet.state_dict().items() if not is_prior_attention_key(k)}, assign=True
        )
        state = half({**unet_to_ldm(stock), **vae_to_ldm(vae), **clip_text_to_ldm(text)})
        configs = {"unet": json_config(stock), "vae": json_config(vae), "text_encoder": text.config.to_dict()}
        save_tensors(state, todo["sd"], {"format": "pt", SD_CONFIGS_METADATA: json.dumps(configs)})
    if "sspir_one_step" in todo:  # before the fp16 cast below: the LoRA is drawn in fp32 either way
        one_step, lora = one_step_model(models, seed)
        save_compact(
            one_step.to(dtype=torch.float16), todo["sspir_one_step"], {k: v.to(torch.float16) for k, v in lora.items()}
        )
    if "sspir" in todo:
        models.to(dtype=torch.float16)
        save_compact(models, todo["sspir"])
    if "clip_vision" in todo:
        with empty_weights():
            tower = CLIPVisionModel(CLIPVisionConfig(**read_json(CLIP_VISION_CONFIG)))
        fill_random(tower, generator)
        state = half(
            {
                k if k.startswith("vision_model.") else f"vision_model.{k}": v  # ComfyUI's key layout
                for k, v in tower.state_dict().items()
                if not k.endswith("position_ids")
            }
        )
        save_tensors(state, todo["clip_vision"], {"format": "pt"})
    return paths


CACHE_VERSION = "3"  # 2: the one-step file; 3: its LoRA drawn without peft
"""Names the cached set's folder (``native-demo-<version>``): bump it when these models change."""


def cached_native_demo_models(cache_root: str | Path, seed: int = 0) -> Path:
    """The native demo set in ``cache_root/native-demo-<version>``, written once (about 60 s) and then reused.

    A ``.complete`` marker is written last, so a half-written set (an interrupted run) is written again; an
    exclusive lock on ``.lock`` makes a second process wait for the first one's set instead of writing over it.
    """
    root = Path(cache_root) / f"native-demo-{CACHE_VERSION}"
    done = root / ".complete"
    if done.is_file():
        return root
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a+") as lock:
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        except ImportError:  # Windows: no lock (two first runs at once would both write the set)
            pass
        if not done.is_file():
            write_native_demo_models(root, seed=seed, overwrite=True)
            done.write_text("ok")
    return root
