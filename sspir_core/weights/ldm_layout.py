"""Key names of the original LDM/CompVis single-file layout, derived from diffusers-layout key names.

diffusers converts LDM files for us, but when a key is missing it fails with "Cannot copy out of meta
tensor" and never says which. Mapping every parameter the diffusers model expects back to its LDM name lets
the loader check a file *before* converting it and name what is missing. The tests build tiny LDM files
with these names and load them through diffusers' converter, so the names are checked against it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_TEXT_PREFIX = "cond_stage_model.transformer.text_model."  # SD1.x: transformers CLIPTextModel
OPEN_CLIP_TEXT_PREFIX = "cond_stage_model.model."  # SD2.x: OpenCLIP text tower

_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_OPEN_CLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def _split(rest: str) -> tuple[str, str]:
    """'norm1.weight' -> ('norm1', 'weight'); 'to_out.0.bias' -> ('to_out.0', 'bias')."""
    module, _, param = rest.rpartition(".")
    return module, param


def _resnet(rest: str, table: Mapping[str, str]) -> str:
    module, param = _split(rest)
    return f"{table.get(module, module)}.{param}"


def unet_key_to_ldm(key: str, config: Mapping[str, Any]) -> str:
    """LDM name of one diffusers ``UNet2DConditionModel`` parameter (SD1.x/SD2.x layout)."""
    layers = config["layers_per_block"]
    if not isinstance(layers, int):
        raise ValueError("per-block layers_per_block lists are not used by SD1.x/SD2.x")
    fixed = {
        "conv_in": "input_blocks.0.0",
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    module, param = _split(key)
    if module in fixed:
        return f"{UNET_PREFIX}{fixed[module]}.{param}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = 1 + block * (layers + 1) + j
        inner = _resnet(rest, _UNET_RESNET) if kind == "resnets" else rest
        return f"{UNET_PREFIX}input_blocks.{index}.{0 if kind == 'resnets' else 1}.{inner}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
        return f"{UNET_PREFIX}input_blocks.{(int(m[1]) + 1) * (layers + 1)}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key):
        kind, j, rest = m[1], int(m[2]), m[3]
        if kind == "resnets":
            return f"{UNET_PREFIX}middle_block.{2 * j}.{_resnet(rest, _UNET_RESNET)}"
        return f"{UNET_PREFIX}middle_block.1.{rest}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = block * (layers + 1) + j
        inner = _resnet(rest, _UNET_RESNET) if kind == "resnets" else rest
        return f"{UNET_PREFIX}output_blocks.{index}.{0 if kind == 'resnets' else 1}.{inner}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
        block = int(m[1])
        has_attention = config["up_block_types"][block].startswith("CrossAttn")
        index = block * (layers + 1) + layers
        return f"{UNET_PREFIX}output_blocks.{index}.{2 if has_attention else 1}.conv.{m[2]}"
    raise ValueError(f"no LDM name known for UNet parameter {key!r}")


def vae_key_to_ldm(key: str, config: Mapping[str, Any]) -> str:
    """LDM name of one diffusers ``AutoencoderKL`` parameter."""
    n_blocks = len(config["block_out_channels"])
    resnet_table = {"conv_shortcut": "nin_shortcut"}
    module, param = _split(key)
    if module in ("quant_conv", "post_quant_conv"):
        return f"{VAE_PREFIX}{key}"
    if m := re.fullmatch(r"(encoder|decoder)\.(conv_in|conv_out|conv_norm_out)", module):
        name = "norm_out" if m[2] == "conv_norm_out" else m[2]
        return f"{VAE_PREFIX}{m[1]}.{name}.{param}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"{VAE_PREFIX}encoder.down.{m[1]}.block.{m[2]}.{_resnet(m[3], resnet_table)}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
        return f"{VAE_PREFIX}encoder.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        level = n_blocks - 1 - int(m[1])
        return f"{VAE_PREFIX}decoder.up.{level}.block.{m[2]}.{_resnet(m[3], resnet_table)}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
        return f"{VAE_PREFIX}decoder.up.{n_blocks - 1 - int(m[1])}.upsample.conv.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{VAE_PREFIX}{m[1]}.mid.block_{int(m[2]) + 1}.{_resnet(m[3], resnet_table)}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
        inner_module, inner_param = _split(m[2])
        return f"{VAE_PREFIX}{m[1]}.mid.attn_1.{_VAE_ATTENTION[inner_module]}.{inner_param}"
    raise ValueError(f"no LDM name known for VAE parameter {key!r}")


def clip_text_key_to_ldm(key: str) -> str:
    """LDM name of one transformers ``CLIPTextModel`` parameter in an SD1.x file."""
    return CLIP_TEXT_PREFIX + key.removeprefix("text_model.")


def open_clip_text_key_to_ldm(key: str) -> str:
    """LDM (OpenCLIP) name of one transformers ``CLIPTextModel`` parameter in an SD2.x file.

    q/k/v projections share one packed ``in_proj`` tensor in OpenCLIP, so three keys map to one name.
    """
    key = key.removeprefix("text_model.")
    fixed = {
        "embeddings.token_embedding.weight": "token_embedding.weight",
        "embeddings.position_embedding.weight": "positional_embedding",
        "final_layer_norm.weight": "ln_final.weight",
        "final_layer_norm.bias": "ln_final.bias",
    }
    if key in fixed:
        return OPEN_CLIP_TEXT_PREFIX + fixed[key]
    m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", key)
    if m is None:
        raise ValueError(f"no OpenCLIP name known for text-encoder parameter {key!r}")
    module, param = _split(m[2])
    if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
        name = f"attn.in_proj_{param}"
    else:
        name = f"{_OPEN_CLIP_LAYER[module]}.{param}"
    return f"{OPEN_CLIP_TEXT_PREFIX}transformer.resblocks.{m[1]}.{name}"


def expected_ldm_keys(part: str, model_keys: Iterable[str], config: Mapping[str, Any], base: str) -> list[str]:
    """The LDM keys a single file must hold to fill every parameter of one diffusers component, in order.

    ``part`` is "unet", "vae" or "text_encoder"; ``base`` is "sd15" or "sd21" (it picks the text layout).
    """
    if part == "unet":
        names = (unet_key_to_ldm(k, config) for k in model_keys)
    elif part == "vae":
        names = (vae_key_to_ldm(k, config) for k in model_keys)
    elif part == "text_encoder":
        to_ldm = clip_text_key_to_ldm if base == "sd15" else open_clip_text_key_to_ldm
        names = (to_ldm(k) for k in model_keys)
    else:
        raise ValueError(f"unknown part {part!r}")
    return list(dict.fromkeys(names))


def ldm_mismatch(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    """The entries where a MODEL's detected LDM UNet config (ComfyUI's ``unet_config``) differs from what an SSP-IR
    patch needs (``expected``: :func:`sspir_core.native.layout.expected_ldm_config`); empty: it fits."""
    out = []
    for key, want in expected.items():
        got = actual.get(key)
        if isinstance(got, Sequence) and not isinstance(got, str):
            got = list(got)
        if got != want:
            out.append(f"{key}={got!r} (the patch needs {want!r})")
    return out
