"""One training micro-step's forward pass and losses, shared by the trainer and `sspir bench` (no accelerate here).

The official ``train.py`` loop (repository ``zyhrainbow/SSP-IR``): GT latents ``vae.encode(gt).latent_dist.sample()
* scaling_factor``, Gaussian noise, timesteps ``randint(0, num_train_timesteps)``, ``add_noise``, epsilon target;
text through ``get_unweighted_text_embeddings`` of ``models/model.py`` (long prompts in 75-token chunks); the
loss ``MSE + 0.1 * L1 + 0.01 * FFTLoss`` against the GT resized to each Processor RGB scale (:mod:`..losses`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from ..restore.pipeline import RestorePipeline
from ..restore.prompt import encode_long_prompt
from .losses import SSPIRLosses, sspir_losses


@torch.no_grad()
def encode_frozen(
    pipe: RestorePipeline,
    gt: torch.Tensor,
    lq: torch.Tensor,
    captions: list[str],
    g: torch.Generator,
    max_chunks: int = 4,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frozen encoders: GT latents (VAE posterior sample x scaling), long-prompt text embedding, CLIP tokens of the
    LQ."""
    dist = pipe.vae.encode((2 * gt - 1).to(dtype)).latent_dist
    latents = dist.sample(generator=g).float() * pipe.vae.config.scaling_factor
    text = encode_long_prompt(pipe.text_encoder, pipe.tokenizer, captions, max_chunks, gt.device)
    clip_tokens = pipe.clip_vision(lq.to(dtype))
    return latents, text.float(), clip_tokens.float()


def training_losses(
    pipe: RestorePipeline,
    module: Callable[..., Any],
    noise_scheduler: Any,
    gt: torch.Tensor,
    lq: torch.Tensor,
    captions: list[str],
    g: torch.Generator,
    max_chunks: int = 4,
    frozen_dtype: torch.dtype = torch.float32,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> SSPIRLosses:
    """Noise the GT latents at uniform timesteps, predict the noise with ``module`` (a TrainModule), return the losses.

    ``gt``/``lq`` in [0, 1] on the device; every random number comes from ``g``.
    """
    with autocast():
        latents, text, clip_tokens = encode_frozen(pipe, gt, lq, captions, g, max_chunks, frozen_dtype)
    noise = torch.randn(latents.shape, generator=g, device=latents.device)
    t = torch.randint(
        0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=g, device=latents.device
    ).long()
    noisy = noise_scheduler.add_noise(latents, noise, t)
    with autocast():
        eps, rgbs = module(noisy, t, text, clip_tokens, lq)
    return sspir_losses(eps, noise, rgbs, 2 * gt - 1)
