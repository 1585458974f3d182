"""One-step SSP-IR on the native route, without ComfyUI: the LoRA's key mapping, both file forms, the start.

Expected names are ComfyUI's LDM UNet layout written out by hand (``input_blocks.0.0`` is conv_in, ResBlock
``in_layers.2``/``out_layers.3``/``skip_connection`` are conv1/conv2/conv_shortcut, ...); expected weights come
from the reference merge (:func:`merge_lora_weights`, the reference route's) on the diffusers UNet.
"""

from __future__ import annotations

import math

import pytest
import torch

from sspir_core.demo.presets import tiny_models
from sspir_core.errors import CheckpointError
from sspir_core.models.build import base_unet_config
from sspir_core.models.one_step import (
    alpha_bar,
    lora_state_dict,
    merge_lora_weights,
    one_step_sigma,
    predict_x0,
)
from sspir_core.native.one_step import comfy_lora_patches, comfy_unet_key, one_step_start
from sspir_core.native.patch import load_native_patch
from sspir_core.weights.ldm_layout import UNET_PREFIX
from sspir_core.weights.ldm_writer import unet_to_ldm

EPS32 = torch.finfo(torch.float32).eps

# diffusers name -> ComfyUI key, by hand from the LDM layout of SD1.5 (2 layers per level, up block 0 without
# attention): down (i, j) is input block 1 + 3i + j, up (i, j) output block 3i + j.
SD15_NAMES = {
    "conv_in": "input_blocks.0.0",
    "down_blocks.0.resnets.1.conv1": "input_blocks.2.0.in_layers.2",
    "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q": "input_blocks.4.1.transformer_blocks.0.attn1.to_q",
    "down_blocks.1.attentions.1.transformer_blocks.0.ff.net.0.proj": "input_blocks.5.1.transformer_blocks.0.ff.net.0.proj",  # noqa: E501 (one key, one pattern)
    "down_blocks.1.resnets.0.conv_shortcut": "input_blocks.4.0.skip_connection",
    "down_blocks.0.downsamplers.0.conv": "input_blocks.3.0.op",
    "mid_block.resnets.1.conv2": "middle_block.2.out_layers.3",
    "mid_block.attentions.0.proj_in": "middle_block.1.proj_in",
    "up_blocks.0.resnets.2.conv1": "output_blocks.2.0.in_layers.2",
    "up_blocks.0.upsamplers.0.conv": "output_blocks.2.1.conv",
    "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_out.0": "output_blocks.5.1.transformer_blocks.0.attn2.to_out.0",  # noqa: E501 (one key, one pattern)
    "up_blocks.1.upsamplers.0.conv": "output_blocks.5.2.conv",
    "up_blocks.3.resnets.0.conv_shortcut": "output_blocks.9.0.skip_connection",
    "conv_out": "out.2",
}


@pytest.mark.parametrize("name", sorted(SD15_NAMES))
def test_lora_targets_map_to_comfyui_keys(name):
    assert comfy_unet_key(name, base_unet_config("sd15")) == f"diffusion_model.{SD15_NAMES[name]}.weight"


def one_step_with_adapter(models, seed: int = 0):
    """A one-step model whose UNet carries its LoRA as a peft adapter (what the trainer saves), B random so it
    changes the output; the LoRA is the demo one's draw (``one_step_model``), loaded into the adapter."""
    from sspir_core.demo.model_files import one_step_model
    from sspir_core.models.one_step import add_lora, load_lora_state_dict

    models, lora = one_step_model(models, seed)
    add_lora(models.unet, models.lora, torch.Generator().manual_seed(0))
    load_lora_state_dict(models.unet, lora, "test")
    return models


def _comfy_merge(weights: dict[str, torch.Tensor], patches: dict) -> dict[str, torch.Tensor]:
    """ComfyUI's LoRA arithmetic by hand: ``W + (alpha / rank) * (B.flatten(1) @ A.flatten(1))`` in W's shape."""
    out = dict(weights)
    for key, (b, a, alpha) in patches.items():
        w = out[key]
        out[key] = w + (alpha / a.shape[0]) * (b.float().flatten(1) @ a.float().flatten(1)).reshape(w.shape)
    return out


@pytest.mark.parametrize("form", ["compact", "official"])
def test_both_file_forms_give_the_lora_and_its_patches_equal_the_reference_merge(tmp_path, form):
    from sspir_core.weights.checkpoint import save_compact, save_official_checkpoint

    models = one_step_with_adapter(tiny_models(seed=3), seed=3)
    path = (
        save_compact(models, tmp_path / "w.safetensors")
        if form == "compact"
        else save_official_checkpoint(models, tmp_path / "checkpoint-1")
    )
    patch = load_native_patch(path)
    lora = patch.one_step
    assert lora is not None and lora.spec == models.lora
    want = lora_state_dict(models.unet)
    assert lora.tensors.keys() == want.keys() and all(torch.equal(lora.tensors[k], want[k]) for k in want)

    base = {"diffusion_model." + k.removeprefix(UNET_PREFIX): v for k, v in unet_to_ldm(_without_lora(models)).items()}
    patches = comfy_lora_patches(lora, patch.unet_config, {k: v.shape for k, v in base.items()})
    assert len(patches) == len(models.lora.targets)
    merged = _without_lora(models)
    merge_lora_weights(merged, models.lora, want, "test")
    expected = {"diffusion_model." + k.removeprefix(UNET_PREFIX): v for k, v in unet_to_ldm(merged).items()}
    got = _comfy_merge(base, patches)
    for key in patches:  # one rounding of W + delta, deltas of O(1e-2): far below the changes (asserted)
        assert torch.allclose(got[key], expected[key], rtol=0, atol=8 * EPS32), key
        assert not torch.equal(base[key], expected[key])


def _without_lora(models):
    """The diffusers UNet with the LoRA removed (peft's base layers), as the SD file holds it."""
    from sspir_core.models.build import stock_unet_from_config
    from sspir_core.models.one_step import base_state_dict
    from sspir_core.models.unet import is_prior_attention_key

    unet = stock_unet_from_config(dict(models.unet.config))
    state = {k: v for k, v in base_state_dict(models.unet).items() if not is_prior_attention_key(k)}
    unet.load_state_dict(state)
    return unet


def test_fifty_step_files_have_no_lora_and_stray_lora_tensors_are_refused(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from sspir_core.weights.checkpoint import save_compact

    plain = save_compact(tiny_models(seed=3), tmp_path / "plain.safetensors")
    assert load_native_patch(plain).one_step is None
    with safe_open(str(plain), framework="pt") as f:
        state, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    state["lora.conv_in.lora_A.weight"] = torch.zeros(2, 4, 3, 3)
    save_file(state, str(tmp_path / "stray.safetensors"), meta)
    with pytest.raises(CheckpointError, match="stray.safetensors.*does not say one-step"):
        load_native_patch(tmp_path / "stray.safetensors")


def test_lora_that_does_not_fit_the_model_is_refused_naming_the_layer(tmp_path):
    from sspir_core.weights.checkpoint import save_compact

    models = one_step_with_adapter(tiny_models(seed=3), seed=3)
    lora = load_native_patch(save_compact(models, tmp_path / "w.safetensors")).one_step
    config = dict(models.unet.config)
    shapes = {comfy_unet_key(t, config): None for t in lora.spec.targets}
    shapes = {k: torch.Size([1, 2, 3, 3]) for k in shapes}
    with pytest.raises(CheckpointError, match=r"w\.safetensors.*makes a .* weight, the MODEL's diffusion_model\."):
        comfy_lora_patches(lora, config, shapes)
    with pytest.raises(CheckpointError, match=r"layer conv_in \(diffusion_model\.input_blocks\.0\.0\.weight\) is not"):
        comfy_lora_patches(lora, config, {})


def test_euler_from_sigma_999_on_the_one_step_start_is_the_ddpm_single_step():
    """ComfyUI's euler from sigma to 0 returns ``denoised = x - sigma * eps(x / sqrt(1 + sigma^2))``: with the
    one-step start the model sees the LQ latent itself and the output is OSEDiff's x0 (to fp32 rounding of a
    few products of size 1/sqrt(abar) ~ 14.6)."""
    g = torch.Generator().manual_seed(0)
    z, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t, sigma = one_step_sigma()
    assert t == 999 and sigma == pytest.approx(math.sqrt((1 - alpha_bar(None)) / alpha_bar(None)))
    sigma32 = float(torch.tensor(sigma, dtype=torch.float32))  # ComfyUI's sigma table is float32
    x = one_step_start(z, sigma32)
    model_input = x / (sigma32**2 + 1) ** 0.5
    scale = 1 / alpha_bar(None) ** 0.5
    assert torch.allclose(model_input, z, rtol=0, atol=4 * EPS32 * float(z.abs().max()))
    denoised = x - eps * sigma32
    expected = predict_x0(z, eps, alpha_bar(None))
    bound = 8 * EPS32 * scale * float(z.abs().max() + eps.abs().max())
    assert float((denoised - expected).abs().max()) <= bound
    assert float((z * scale - expected).abs().max()) > 1  # the eps term matters: the check resolves it
