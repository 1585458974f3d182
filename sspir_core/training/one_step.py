"""`sspir train --mode one-step`: one UNet evaluation at t = 999 on the LQ latent, trained as OSEDiff trains.

The forward (``cswry/OSEDiff`` ``osediff.py`` ``OSEDiff_gen.forward``, with SSP-IR's priors added): the VAE latent
of the upscaled LQ goes into ControlNet + patched UNet at t = 999 with no noise; the clean latent is
``x0 = (z - sqrt(1 - abar) eps) / sqrt(abar)``; decoded and clamped to [-1, 1] it is the restored image.

Losses (weights from ``cswry/OSEDiff`` ``train_osediff.py`` defaults, each 0 = off):
``lambda_l2 * MSE(image, GT)`` (1.0) + ``lambda_lpips * LPIPS-VGG(image, GT)`` (2.0) +
``lambda_vsd * VSD(x0)`` (1.0, :mod:`.vsd`) + ``lambda_vsd_lora * fake-score diffusion loss`` (1.0), plus
SSP-IR's Processor constraints ``lambda_rgb * L1`` (0.1) and ``lambda_fft * FFT-L1`` (0.01) per scale
(``zyhrainbow/SSP-IR`` ``train.py``; :mod:`.losses`).

Trainable: what SSP-IR trains (ControlNet with the Processor, the UNet's new attentions, the Refine layer) plus
a LoRA on the SD part of the UNet where OSEDiff puts it (:data:`..models.one_step.LORA_PATTERNS`), and the VSD
fake-score LoRA. OSEDiff trains the generator and the fake score with two AdamW optimisers of the same settings
and separate gradient clipping; their gradients are disjoint (the fake score sees detached latents, the VSD
target is computed without gradient), so one AdamW over both with each set clipped on its own is the same
update, and accelerate then saves and resumes one optimiser as in the 50-step trainer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..models.build import SSPIRModels
from ..models.one_step import (
    LORA_ALPHA,
    ONE_STEP,
    ONE_STEP_TIMESTEP,
    LoraSpec,
    add_lora,
    alpha_bar,
    base_state_dict,
    load_lora_state_dict,
    lora_state_dict,
    lora_targets,
    predict_x0,
)
from ..models.unet import is_prior_attention_key
from ..restore.prompt import encode_prompt_pair
from .losses import FFT_WEIGHT, RGB_WEIGHT, processor_losses
from .models import TrainModule
from .vsd import VSD_ADAPTER, VSDScores, fake_score_loss, vsd_loss

VSD_FILE = Path("vsd") / "fake_score_lora.safetensors"
LOSS_KEYS = ("loss", "loss_mse", "loss_lpips", "loss_vsd", "loss_vsd_lora", "loss_rgb", "loss_fft")


@dataclass
class LossWeights:
    l2: float = 1.0
    lpips: float = 2.0
    vsd: float = 1.0
    vsd_lora: float = 1.0
    rgb: float = RGB_WEIGHT
    fft: float = FFT_WEIGHT
    cfg_vsd: float = 7.5


@dataclass
class Frozen:
    """The frozen parts the loss needs, held outside the module so DDP neither wraps nor broadcasts them."""

    vae: Any
    lpips: Any
    alphas_cumprod: torch.Tensor
    weights: LossWeights


class OneStepModule(TrainModule):
    """Generator (+ VSD scores); ``forward`` is a whole micro-step's losses, one call as DDP needs."""

    def __init__(self, models: SSPIRModels, abar: float, prediction_type: str, vsd: VSDScores | None):
        super().__init__(models)
        self.abar, self.prediction_type = abar, prediction_type
        self.vsd = vsd

    def predict(
        self, z_lq: torch.Tensor, text: torch.Tensor, clip_tokens: torch.Tensor, lq: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The one-step clean latent and the Processor's RGB maps (what restore computes for the same input)."""
        t = torch.full((z_lq.shape[0],), ONE_STEP_TIMESTEP, device=z_lq.device, dtype=torch.long)
        out, rgbs = super().forward(z_lq, t, text, clip_tokens, lq)
        return predict_x0(z_lq.float(), out.float(), self.abar, self.prediction_type), rgbs

    def forward(
        self,
        z_lq: torch.Tensor,
        text: torch.Tensor,
        negative: torch.Tensor,
        clip_tokens: torch.Tensor,
        lq: torch.Tensor,
        gt: torch.Tensor,
        frozen: Frozen,
        g: torch.Generator,
    ) -> dict[str, torch.Tensor]:
        w = frozen.weights
        x0, rgbs = self.predict(z_lq, text, clip_tokens, lq)
        vae = frozen.vae
        dtype = next(vae.parameters()).dtype
        image = vae.decode((x0 / vae.config.scaling_factor).to(dtype)).sample.float().clamp(-1, 1)
        target = 2 * gt - 1
        zero = x0.new_zeros(())
        parts = {
            "loss_mse": F.mse_loss(image, target) * w.l2 if w.l2 else zero,
            "loss_lpips": frozen.lpips(image, target).mean() * w.lpips if w.lpips else zero,
            "loss_vsd": zero,
            "loss_vsd_lora": zero,
        }
        if self.vsd is not None:
            if w.vsd:
                parts["loss_vsd"] = w.vsd * vsd_loss(self.vsd, frozen.alphas_cumprod, x0, text, negative, w.cfg_vsd, g)
            if w.vsd_lora:
                parts["loss_vsd_lora"] = w.vsd_lora * fake_score_loss(self.vsd, frozen.alphas_cumprod, x0, text, g)
        rgb_terms, fft_terms = processor_losses(rgbs, target)
        parts["loss_rgb"] = torch.stack(rgb_terms).sum() * (w.rgb / RGB_WEIGHT) if rgb_terms and w.rgb else zero
        parts["loss_fft"] = torch.stack(fft_terms).sum() * (w.fft / FFT_WEIGHT) if fft_terms and w.fft else zero
        parts["loss"] = sum(parts.values(), zero)
        return parts


def weights_from(cfg: Any) -> LossWeights:
    return LossWeights(
        cfg.lambda_l2,
        cfg.lambda_lpips,
        cfg.lambda_vsd,
        cfg.lambda_vsd_lora,
        cfg.lambda_rgb,
        cfg.lambda_fft,
        cfg.cfg_vsd,
    )


class OneStepTraining:
    """What the trainer's one-step mode adds: the LoRA, the VSD scores, LPIPS, the micro-step and its files."""

    def __init__(self, trainer: Any, params: list[torch.nn.Parameter]):
        cfg, pipe, models = trainer.cfg, trainer.pipe, trainer.models
        self.weights = weights_from(cfg)
        device = trainer.device
        g = torch.Generator().manual_seed(cfg.seed)
        vsd = None
        if self.weights.vsd or self.weights.vsd_lora:
            sd_state = {k: v for k, v in base_state_dict(models.unet).items() if not is_prior_attention_key(k)}
            vsd = VSDScores(sd_state, dict(models.unet.config), cfg.lora_rank, g).to(device)
        spec = LoraSpec(cfg.lora_rank, LORA_ALPHA, lora_targets(models.unet))
        lora = add_lora(models.unet, spec, g)
        for p in lora:
            p.requires_grad_(True)
        models.mode, models.lora = ONE_STEP, spec
        lpips = None
        if self.weights.lpips:
            from .lpips import load_lpips

            lpips = load_lpips(cfg.lpips_weights, device)
        from ..restore.schedulers import SD_SCHEDULE, make_scheduler

        sched_cfg = {**SD_SCHEDULE, **(pipe.scheduler_config or {})}
        alphas = make_scheduler("ddpm", pipe.scheduler_config).alphas_cumprod
        self.module = OneStepModule(models, alpha_bar(pipe.scheduler_config), sched_cfg["prediction_type"], vsd).train()
        self.gen_params = [*params, *lora]
        self._refine = {id(p) for p in models.refine.parameters()}
        self.vsd_params = list(vsd.lora) if vsd is not None else []
        self.params = [*self.gen_params, *self.vsd_params]
        self.frozen = Frozen(pipe.vae, lpips, alphas, self.weights)
        self.pipe, self.max_chunks, self.frozen_dtype = pipe, cfg.max_chunks, trainer.frozen_dtype
        self.negative_prompt = cfg.vsd_negative_prompt

    @torch.no_grad()
    def encode(
        self, gt: torch.Tensor, lq: torch.Tensor, captions: list[str], g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(LQ latent, text, VSD negative text, CLIP tokens): the frozen encoders, as restore runs them."""
        pipe = self.pipe
        dist = pipe.vae.encode((2 * lq - 1).to(self.frozen_dtype)).latent_dist
        z = dist.sample(generator=g).float() * pipe.vae.config.scaling_factor
        text, negative = encode_prompt_pair(
            pipe.text_encoder, pipe.tokenizer, captions, self.negative_prompt, self.max_chunks, lq.device
        )
        clip_tokens = pipe.clip_vision(lq.to(self.frozen_dtype))
        return z, text.float(), negative.float(), clip_tokens.float()

    def losses(
        self, trainer: Any, gt: torch.Tensor, lq: torch.Tensor, captions: list[str], g: torch.Generator
    ) -> dict[str, torch.Tensor]:
        with trainer.accelerator.autocast():
            z, text, negative, clip_tokens = self.encode(gt, lq, captions, g)
            return trainer.module_p(z, text, negative, clip_tokens, lq, gt, self.frozen, g)

    def clip(self, accelerator: Any, max_norm: float) -> torch.Tensor:
        """Clip the generator's and the fake score's gradients each on their own (as OSEDiff); the generator's norm.

        The generator's clip leaves the Refine layer out, as the 50-step trainer does (official ``train.py``
        clips the ControlNet and UNet parameters only).
        """
        if self.vsd_params:
            accelerator.clip_grad_norm_(self.vsd_params, max_norm)
        return accelerator.clip_grad_norm_([p for p in self.gen_params if id(p) not in self._refine], max_norm)

    def save(self, output_dir: str | Path) -> None:
        from ..weights.checkpoint import save_tensors

        if self.module.vsd is not None:
            save_tensors(
                lora_state_dict(self.module.vsd.unet, VSD_ADAPTER),
                Path(output_dir) / VSD_FILE,
                {"format": "pt", "what": "one-step VSD fake-score LoRA (training state only)"},
            )

    def load(self, input_dir: str | Path) -> None:
        from ..weights.checkpoint import read_state_dict

        if self.module.vsd is not None:
            path = Path(input_dir) / VSD_FILE
            if not path.is_file():
                from ..errors import InputError

                raise InputError(
                    f"--resume {input_dir}: no {VSD_FILE} (the VSD fake-score LoRA); it was not written "
                    "by a one-step run with VSD on (give --lambda-vsd 0 --lambda-vsd-lora 0 to match)"
                )
            load_lora_state_dict(self.module.vsd.unet, read_state_dict(path), str(path), VSD_ADAPTER)
