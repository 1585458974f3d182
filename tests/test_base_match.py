"""Base-model checks before sampling (sspir_core.weights.base_match), on config dicts and file headers.

ComfyUI's side is given as it is in 0.3.75: ``detect_unet_config``'s dicts (tests/test_native.py), the class
names of ``supported_models`` (a MODEL's ``model_config``) and of ``model_sampling`` (``ModelSampling`` built
from ``ModelSamplingDiscrete`` and ``EPS`` / ``V_PREDICTION``, comfy/model_base.py ``model_sampling``).
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import save_file

from sspir_core.demo.native_models import NATIVE_UNET
from sspir_core.demo.presets import TINY_UNET
from sspir_core.errors import CheckpointError
from sspir_core.models.build import base_unet_config
from sspir_core.native.layout import expected_ldm_config
from sspir_core.weights.base_match import (
    check_sd_fits_sspir,
    native_model_problem,
    sd_v_prediction,
    unet_shape_differences,
)
from tests.test_native import COMFY_SD15, COMFY_SDXL

EPS = ["ModelSampling", "ModelSamplingDiscrete", "EPS", "object"]
V_PRED = ["ModelSampling", "ModelSamplingDiscrete", "V_PREDICTION", "EPS", "object"]
SD15 = ["SD15", "BASE", "object"]
SD20 = ["SD20", "BASE", "object"]
SDXL = ["SDXL", "BASE", "object"]
COMFY_SD21 = {**COMFY_SD15, "context_dim": 1024, "use_linear_in_transformer": True}
# the native demo UNet as ComfyUI detects it: an SD15 of 3 levels, 1 layer each, all 320 wide
COMFY_DEMO = {**COMFY_SD15, "channel_mult": [1, 1, 1], "num_res_blocks": [1, 1, 1], "transformer_depth": [1, 1, 0]}


def _problem(
    base: str, config: dict | None, classes: list[str], sampling: list[str] = EPS, unet: dict | None = None
) -> str | None:
    expected = expected_ldm_config(unet or base_unet_config(base))
    return native_model_problem("patch.safetensors", base, expected, config, classes, sampling)


def test_the_model_the_patch_was_trained_on_passes():
    assert _problem("sd15", COMFY_SD15, SD15) is None
    assert _problem("sd21", COMFY_SD21, SD20) is None
    assert _problem("sd15", COMFY_DEMO, SD15, unet=NATIVE_UNET) is None


@pytest.mark.parametrize(
    "base, config, classes, sampling, match",
    [
        (
            "sd21",
            COMFY_SD21,
            SD20,
            V_PRED,
            r"patch\.safetensors was trained on SD2\.1-base with epsilon prediction, but this MODEL \(SD2\.x\) uses "
            r"v-prediction \(e\.g\. SD2\.1-768-v",
        ),
        (
            "sd15",
            COMFY_SD15,
            SD15,
            V_PRED,
            r"trained on SD1\.5 with epsilon prediction, but this MODEL \(SD1\.5\) uses v-",
        ),
        ("sd15", COMFY_SD21, SD20, EPS, r"trained on SD1\.5, but this MODEL is SD2\.x: context_dim=1024"),
        ("sd21", COMFY_SD15, SD15, EPS, r"trained on SD2\.1-base, but this MODEL is SD1\.5: context_dim=768"),
        ("sd15", COMFY_SDXL, SDXL, EPS, r"trained on SD1\.5, but this MODEL is SDXL: adm_in_channels=2816"),
        ("sd15", COMFY_DEMO, SD15, EPS, r"trained on SD1\.5, but this MODEL is SD1\.5 of another size: channel_mult"),
        ("sd15", None, ["Flux", "BASE", "object"], EPS, r"trained on SD1\.5, but this MODEL is Flux \(not an SD1"),
    ],
)
def test_each_refusal_names_both_sides(base, config, classes, sampling, match):
    problem = _problem(base, config, classes, sampling)
    assert problem is not None
    assert re.search(match, problem), problem
    assert "Load the " in problem  # and what to do


def _ldm_unet_file(path, config: dict) -> None:
    from sspir_core.models.build import stock_unet_from_config
    from sspir_core.weights.ldm_writer import unet_to_ldm

    save_file({k: v.half() for k, v in unet_to_ldm(stock_unet_from_config(config)).items()}, str(path))


def test_sd_file_of_another_unet_shape_is_refused_from_its_header(tmp_path):
    """Hand-made: a tiny SD UNet (width 24) under SSP-IR weights trained on a 320-wide one."""
    sd = tmp_path / "small-sd.safetensors"
    _ldm_unet_file(sd, TINY_UNET)
    check_sd_fits_sspir(sd, tmp_path / "w.safetensors", TINY_UNET, "sd15", "sd15")  # the same shape: fine
    with pytest.raises(CheckpointError) as err:
        check_sd_fits_sspir(sd, tmp_path / "full.safetensors", base_unet_config("sd15"), "sd15", "sd15")
    text = str(err.value)
    assert text.startswith(
        "full.safetensors was trained on SD1.5 (UNet width 320, text context 768), but "
        "base_model small-sd.safetensors is SD1.5 with a UNet of another shape (UNet width 24, "
        "text context 32): model.diffusion_model.input_blocks.0.0.weight is [24, 4, 3, 3] (the "
        "SSP-IR weights need [320, 4, 3, 3])"
    ), text
    assert "Pick the SD checkpoint" in text


def test_shape_differences_in_diffusers_names():
    shapes = {"conv_in.weight": [24, 4, 3, 3]}
    diff = unet_shape_differences(TINY_UNET, shapes, ldm=False)
    assert "conv_in.weight" not in " ".join(diff) and "conv_in.bias missing" in diff
    assert unet_shape_differences(TINY_UNET, {**shapes, "conv_in.weight": [48, 4, 3, 3]}, ldm=False)[0] == (
        "conv_in.weight is [48, 4, 3, 3] (the SSP-IR weights need [24, 4, 3, 3])"
    )


def test_v_prediction_sd_files_are_found(tmp_path):
    plain, vpred = tmp_path / "plain.safetensors", tmp_path / "v.safetensors"
    save_file({"model.diffusion_model.out.2.bias": torch.zeros(4)}, str(plain))
    save_file({"model.diffusion_model.out.2.bias": torch.zeros(4), "v_pred": torch.zeros(0)}, str(vpred))
    assert sd_v_prediction(plain) is None
    assert sd_v_prediction(vpred) == "it holds a 'v_pred' key"
    folder = tmp_path / "sd21-768"
    (folder / "scheduler").mkdir(parents=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({"prediction_type": "v_prediction"}))
    assert "prediction_type 'v_prediction'" in sd_v_prediction(folder)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({"prediction_type": "epsilon"}))
    assert sd_v_prediction(folder) is None
