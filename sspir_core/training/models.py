"""What the trainer trains and the frozen parts around it, built for a preset or real SD/CLIP weights."""

from __future__ import annotations

import torch
from torch import nn

from ..models.build import SSPIRModels, move_module
from ..restore.pipeline import RestorePipeline
from .config import TrainConfig

TINY_FROZEN_SEED = 0
"""The tiny-random preset's frozen VAE/text/CLIP come from this seed, as `sspir restore --preset tiny-random`
builds them with its default --seed 0: the checkpoint then restores with the same frozen parts it was trained with."""


class TrainModule(nn.Module):
    """The trainable SSP-IR networks in one module (one DDP/FSDP wrapper), forward = one denoising prediction."""

    def __init__(self, models: SSPIRModels):
        super().__init__()
        self.unet = models.unet
        self.controlnet = models.controlnet
        self.refine = models.refine

    def forward(
        self,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        text: torch.Tensor,
        clip_tokens: torch.Tensor,
        lq: torch.Tensor,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        image_emb = self.refine(clip_tokens)
        res = self.controlnet(
            noisy, timesteps, text, controlnet_cond=lq, image_encoder_hidden_states=image_emb, return_rgbs=True
        )
        eps = self.unet(
            noisy,
            timesteps,
            text,
            image_encoder_hidden_states=image_emb,
            down_block_additional_residuals=res.down_residuals,
            mid_block_additional_residual=res.mid_residual,
        ).sample
        return eps, res.rgbs


def build_pipeline(cfg: TrainConfig, device: torch.device, frozen_dtype: torch.dtype) -> RestorePipeline:
    """A RestorePipeline whose SSP-IR models are trainable (fp32) and whose SD/CLIP parts are frozen.

    Fresh SSP-IR parts follow the official init (``train.py``: ``ControlNetModel.from_unet(unet,
    use_image_cross_attention=True)``, ``TPBNet(last_dim=512)``): the ControlNet is a copy of the (patched) UNet
    encoder, the new attentions and the Refine layer start random, the Processor's output conv starts at zero.
    """
    if cfg.preset == "tiny-random":
        from ..demo.presets import tiny_random_pipeline

        pipe = tiny_random_pipeline(cfg.init_sspir, device=device, seed=TINY_FROZEN_SEED)
    else:
        from ..models import RefineLayer, patch_unet
        from ..models.controlnet import controlnet_from_unet
        from ..weights import load_clip_vision, load_sd_components
        from ..weights.checkpoint import load_sspir_weights

        sd = load_sd_components(cfg.sd, base=cfg.base)
        clip = load_clip_vision(cfg.clip_vision)
        if cfg.init_sspir:
            models = load_sspir_weights(cfg.init_sspir, sd_unet=sd.unet, base=cfg.base or sd.base)
        else:
            torch.manual_seed(cfg.seed)
            unet = patch_unet(sd.unet)
            models = SSPIRModels(unet, controlnet_from_unet(unet), RefineLayer(clip_dim=clip.width), sd.base)
        pipe = RestorePipeline(models, sd.vae, sd.text_encoder, sd.tokenizer, clip, sd.scheduler_config, device=device)
    pipe.untrained = False
    for m in (pipe.vae, pipe.text_encoder, pipe.clip_vision):
        move_module(m, device, frozen_dtype)
    return pipe
