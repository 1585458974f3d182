"""Write diffusers models out as an original LDM-layout single file (tiny demo models, tests).

Key names come from :mod:`.ldm_layout` (what the loader checks against); the tensor layout
changes that LDM files have on top of renaming are written here: 1x1-conv VAE attention projections and
OpenCLIP's packed q/k/v ``in_proj``. Loading such a file through diffusers' own converter and getting every
tensor back unchanged checks the key names against an independent implementation.
"""

from __future__ import annotations

import torch

from .ldm_layout import (
    clip_text_key_to_ldm,
    open_clip_text_key_to_ldm,
    unet_key_to_ldm,
    vae_key_to_ldm,
)

_VAE_ATTENTION_PROJECTIONS = ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight")


def unet_to_ldm(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {unet_key_to_ldm(k, unet.config): v.clone() for k, v in unet.state_dict().items()}


def vae_to_ldm(vae: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in vae.state_dict().items():
        if "mid_block.attentions" in key and key.endswith(_VAE_ATTENTION_PROJECTIONS):
            value = value[:, :, None, None]  # LDM keeps these as 1x1 convolutions
        out[vae_key_to_ldm(key, vae.config)] = value.clone()
    return out


def clip_text_to_ldm(text_encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """SD1.x layout; like real files it also carries the position_ids buffer."""
    out = {clip_text_key_to_ldm(k): v.clone() for k, v in text_encoder.state_dict().items()}
    n_positions = text_encoder.config.max_position_embeddings
    out[clip_text_key_to_ldm("embeddings.position_ids")] = torch.arange(n_positions)[None]
    return out


def open_clip_text_to_ldm(text_encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """SD2.x layout: q, k, v packed into ``in_proj`` in that order; plus a projection and logit scale."""
    state = text_encoder.state_dict()
    out = {}
    for key, value in state.items():
        name = open_clip_text_key_to_ldm(key)
        if ".self_attn.q_proj." in key:
            parts = [state[key.replace("q_proj", p)] for p in ("q_proj", "k_proj", "v_proj")]
            out[name] = torch.cat(parts).clone()
        elif ".self_attn.k_proj." in key or ".self_attn.v_proj." in key:
            continue
        else:
            out[name] = value.clone()
    width = text_encoder.config.hidden_size
    out["cond_stage_model.model.text_projection"] = torch.randn(width, text_encoder.config.projection_dim)
    out["cond_stage_model.model.logit_scale"] = torch.tensor(4.6)
    return out
