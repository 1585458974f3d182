"""Helpers for checking this implementation against the official code's parity fixtures."""

from __future__ import annotations

from pathlib import Path

import torch

from ..weights.checkpoint import load_official_checkpoint
from .losses import sspir_losses


def _read_inputs(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "inputs.safetensors"))


@torch.no_grad()
def run_parity_fixture(path: str | Path) -> dict[str, torch.Tensor]:
    """Recompute every output of an official parity fixture (``path/checkpoint-7`` + ``inputs.safetensors``).

    Uses only the public API and never reads ``outputs.safetensors``.
    """
    root = Path(path)
    ckpt = next(iter(sorted(root.glob("checkpoint-*"))), None)
    if ckpt is None:
        raise FileNotFoundError(f"{root}: no checkpoint-N folder")
    models = load_official_checkpoint(ckpt, device="cpu", dtype=torch.float32).eval()
    x = _read_inputs(root)
    scale = float(x["conditioning_scale"]) if "conditioning_scale" in x else 1.0
    tokens = x["clip_hidden_states"][:, 1:] if "clip_hidden_states" in x else x["clip_patch_tokens"]
    sample, t, text = x["noisy_latent"], x["timestep"], x["text_emb"]

    out: dict[str, torch.Tensor] = {}
    image = models.refine(tokens)
    out["refine_out"] = image
    rgbs, downs, mid = models.controlnet(
        sample,
        t,
        encoder_hidden_states=text,
        controlnet_cond=x["lq"],
        conditioning_scale=scale,
        image_encoder_hidden_states=image,
    )
    for i, r in enumerate(rgbs):
        out[f"cn_rgb_{i}"] = r
    for i, d in enumerate(downs):
        out[f"cn_down_res_{i:02d}"] = d
    out["cn_mid_res"] = mid

    def unet(**kw: object) -> torch.Tensor:
        return models.unet(
            sample, t, encoder_hidden_states=text, image_encoder_hidden_states=image, return_dict=False, **kw
        )[0]

    out["unet_out"] = unet(down_block_additional_residuals=downs, mid_block_additional_residual=mid)
    out["unet_out_zero_residuals"] = unet(
        down_block_additional_residuals=[torch.zeros_like(d) for d in downs],
        mid_block_additional_residual=torch.zeros_like(mid),
    )
    out["unet_out_pixel_ctx_zeroed"] = unet(
        down_block_additional_residuals=downs,
        mid_block_additional_residual=mid,
        pixel_attention_context=[torch.zeros_like(d) for d in downs],
    )
    losses = sspir_losses(out["unet_out"], x["noise"], rgbs, x["gt"])
    for i, (r, f) in enumerate(zip(losses.rgb_terms, losses.fft_terms)):
        out[f"loss_rgb_scale{i}"] = r
        out[f"loss_fft_scale{i}"] = f
    out["loss_rgb"], out["loss_fft"] = losses.rgb, losses.fft
    out["loss_diff"], out["loss_total"] = losses.diffusion, losses.total
    return out
