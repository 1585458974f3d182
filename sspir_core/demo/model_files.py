"""Tiny random models in ComfyUI's folder layout, under the names the bundled workflows use.

They load through the same loaders as real weights (an LDM single file, a compact SSP-IR file, a CLIP vision
file, a transformers LLaVA folder); the SD and CLIP files carry their small configs in their safetensors
metadata. Outputs are noise-like: nothing is trained. The point is that every workflow runs anywhere in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# One place for the names: the workflows, the test harness and the README use these.
SD_FOLDER, SD_NAME = "checkpoints", "sspir-demo-sd15.safetensors"
SSPIR_FOLDER, SSPIR_NAME = "sspir", "sspir-demo.safetensors"
ONE_STEP_NAME = "sspir-demo-one-step.safetensors"  # the same, as a one-step model (issue 19's extension)
CLIP_VISION_FOLDER, CLIP_VISION_NAME = "clip_vision", "sspir-demo-clip-vision.safetensors"
LLM_FOLDER, LLM_NAME = "LLM", "sspir-demo-llava"
DEMO_FILES = {
    "sd": (SD_FOLDER, SD_NAME),
    "sspir": (SSPIR_FOLDER, SSPIR_NAME),
    "sspir_one_step": (SSPIR_FOLDER, ONE_STEP_NAME),
    "clip_vision": (CLIP_VISION_FOLDER, CLIP_VISION_NAME),
    "captioner": (LLM_FOLDER, LLM_NAME),
}


def json_config(model) -> dict:
    """A diffusers model's config as written to config.json (with ``_class_name``)."""
    return json.loads(model.to_json_string())


def one_step_model(models, seed: int = 0):
    """``(models, lora)``: ``models`` as a one-step SSP-IR model and its UNet LoRA, whose B is random (not zero) so
    it changes the output. Drawn without peft (a training dependency): writing demo files needs none."""
    import copy

    from ..models.one_step import LORA_ALPHA, ONE_STEP, LoraSpec, lora_targets, random_lora

    models = copy.deepcopy(models)
    spec = LoraSpec(2, LORA_ALPHA, lora_targets(models.unet))
    lora = random_lora(models.unet, spec, torch.Generator().manual_seed(seed + 5), b_std=0.05)
    models.mode, models.lora = ONE_STEP, spec
    return models, lora


def write_demo_models(
    root: str | Path, seed: int = 0, overwrite: bool = False, captioner: bool = True
) -> dict[str, Path]:
    """Write the demo models under ``root`` (``checkpoints/``, ``sspir/``, ``clip_vision/``, ``LLM/``).

    Existing files are kept unless ``overwrite``. Returns ``{kind: path}`` for every model.
    """
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

    from ..captioners.tiny import build_llava
    from ..models.build import build_models, stock_unet_from_config
    from ..models.unet import is_prior_attention_key
    from ..weights.bundled_configs import CLIP_VISION_CONFIG_METADATA, SD_CONFIGS_METADATA
    from ..weights.checkpoint import save_compact, save_tensors
    from ..weights.ldm_writer import clip_text_to_ldm, unet_to_ldm, vae_to_ldm
    from .presets import TINY_CLIP_DIM, TINY_CLIP_IMAGE, TINY_UNET, TINY_VAE

    root = Path(root)
    paths = {kind: root / folder / name for kind, (folder, name) in DEMO_FILES.items()}
    if not captioner:
        paths.pop("captioner")
    todo = {k: p for k, p in paths.items() if overwrite or not p.exists()}
    if not todo:
        return paths
    torch.manual_seed(seed)
    models = build_models(unet_config=TINY_UNET, clip_dim=TINY_CLIP_DIM)
    models.base = "sd15"  # the tiny UNet stands in for SD1.5 (the SD file says so through its text encoder keys)
    text_dim = TINY_UNET["cross_attention_dim"]

    if "sd" in todo:
        stock = stock_unet_from_config(TINY_UNET)
        stock.load_state_dict({k: v for k, v in models.unet.state_dict().items() if not is_prior_attention_key(k)})
        vae = AutoencoderKL.from_config(TINY_VAE)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=49408,
                hidden_size=text_dim,
                intermediate_size=2 * text_dim,
                num_hidden_layers=2,
                num_attention_heads=2,
                max_position_embeddings=77,
                projection_dim=text_dim,
                hidden_act="quick_gelu",
            )
        )
        state = {**unet_to_ldm(stock), **vae_to_ldm(vae), **clip_text_to_ldm(text_encoder)}
        configs = {"unet": json_config(stock), "vae": json_config(vae), "text_encoder": text_encoder.config.to_dict()}
        save_tensors(state, todo["sd"], {"format": "pt", SD_CONFIGS_METADATA: json.dumps(configs)})
    if "sspir" in todo:
        todo["sspir"].parent.mkdir(parents=True, exist_ok=True)
        save_compact(models, todo["sspir"])
    if "sspir_one_step" in todo:
        todo["sspir_one_step"].parent.mkdir(parents=True, exist_ok=True)
        one_step, lora = one_step_model(models, seed)
        save_compact(one_step, todo["sspir_one_step"], lora)
    if "clip_vision" in todo:
        vision = {
            "hidden_size": TINY_CLIP_DIM,
            "intermediate_size": 2 * TINY_CLIP_DIM,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": TINY_CLIP_IMAGE,
            "patch_size": 14,
            "hidden_act": "quick_gelu",
            "projection_dim": TINY_CLIP_DIM,
        }
        tower = CLIPVisionModel(CLIPVisionConfig(**vision))
        state = {k: v for k, v in tower.state_dict().items() if not k.endswith("position_ids")}
        save_tensors(state, todo["clip_vision"], {"format": "pt", CLIP_VISION_CONFIG_METADATA: json.dumps(vision)})
    if "captioner" in todo:
        build_llava(todo["captioner"])
    return paths
