"""The variational-score-distillation (VSD) regulariser of one-step training, as OSEDiff does it.

``cswry/OSEDiff`` ``osediff.py`` (class ``OSEDiff_reg``): a frozen "real" SD UNet and a trainable "fake score"
copy with LoRA. The generator's clean latents ``x0`` are noised at ``t ~ U[20, 980)``; the real UNet (CFG
``cfg_vsd`` = 7.5 between the negative and the positive prompt) and the fake one each give an x0 estimate;
``grad = (x0_fake - x0_real) / mean|x0 - x0_real|`` and the loss ``MSE(x0, stopgrad(x0 - grad))`` pushes
the generator's latents towards SD's distribution. The fake UNet follows the generator with its own diffusion
loss on the detached latents (``diff_loss``: ``t ~ U[0, 1000)``, MSE to the noise).

Here both scores are ONE stock SD UNet with one peft LoRA adapter: the adapter on is the fake score, off the
real one (the same numbers as OSEDiff's two UNets, one SD UNet less in memory).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.build import stock_unet_from_config
from ..models.one_step import LORA_ALPHA, LoraSpec, add_lora, lora_targets, set_adapters_enabled

VSD_ADAPTER = "vsd_fake"
VSD_TIMESTEPS = (20, 980)  # OSEDiff_reg.distribution_matching_loss: torch.randint(20, 980, ...)


class VSDScores(nn.Module):
    """The real (adapter off) and fake (adapter on) score UNet in one SD UNet; only the LoRA trains."""

    def __init__(
        self, sd_unet_state: dict[str, torch.Tensor], unet_config: dict, rank: int, generator: torch.Generator
    ):
        super().__init__()
        self.unet = stock_unet_from_config(dict(unet_config))
        self.unet.load_state_dict(sd_unet_state)
        self.unet.requires_grad_(False)
        self.spec = LoraSpec(rank, LORA_ALPHA, lora_targets(self.unet))
        self.lora = add_lora(self.unet, self.spec, generator, adapter=VSD_ADAPTER)
        for p in self.lora:
            p.requires_grad_(True)

    def eps(self, noisy: torch.Tensor, t: torch.Tensor, text: torch.Tensor, fake: bool) -> torch.Tensor:
        set_adapters_enabled(self.unet, fake)
        try:
            return self.unet(noisy, t, encoder_hidden_states=text).sample
        finally:
            set_adapters_enabled(self.unet, True)


def _x0(alphas_cumprod: torch.Tensor, noisy: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    a = alphas_cumprod.to(noisy.device, torch.float32)[t].view(-1, 1, 1, 1)
    return (noisy - (1 - a).sqrt() * eps.float()) / a.sqrt()


def _noise(alphas_cumprod: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    a = alphas_cumprod.to(x0.device, torch.float32)[t].view(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def vsd_loss(
    scores: VSDScores,
    alphas_cumprod: torch.Tensor,
    x0: torch.Tensor,
    text: torch.Tensor,
    negative: torch.Tensor,
    cfg: float,
    g: torch.Generator,
) -> torch.Tensor:
    """OSEDiff's distribution-matching loss on the generator's latents ``x0`` (gradient to ``x0`` only)."""
    b = x0.shape[0]
    t = torch.randint(*VSD_TIMESTEPS, (b,), generator=g, device=x0.device).long()
    noise = torch.randn(x0.shape, generator=g, device=x0.device)
    with torch.no_grad():
        noisy = _noise(alphas_cumprod, x0.detach().float(), noise, t)
        x0_fake = _x0(alphas_cumprod, noisy, scores.eps(noisy, t, text, fake=True), t)
        both = scores.eps(torch.cat([noisy, noisy]), torch.cat([t, t]), torch.cat([negative, text]), fake=False)
        uncond, cond = both.float().chunk(2)
        x0_real = _x0(alphas_cumprod, noisy, uncond + cfg * (cond - uncond), t)
        weight = (x0.detach().float() - x0_real).abs().mean(dim=(1, 2, 3), keepdim=True)
        grad = (x0_fake - x0_real) / weight
        target = x0.detach().float() - grad
    return F.mse_loss(x0.float(), target)


def fake_score_loss(
    scores: VSDScores, alphas_cumprod: torch.Tensor, x0: torch.Tensor, text: torch.Tensor, g: torch.Generator
) -> torch.Tensor:
    """The fake score's own diffusion loss on the detached latents (OSEDiff_reg.diff_loss)."""
    x0 = x0.detach().float()
    t = torch.randint(0, alphas_cumprod.shape[0], (x0.shape[0],), generator=g, device=x0.device).long()
    noise = torch.randn(x0.shape, generator=g, device=x0.device)
    eps = scores.eps(_noise(alphas_cumprod, x0, noise, t), t, text.detach(), fake=True)
    return F.mse_loss(eps.float(), noise)
