"""Does an SD model fit the SSP-IR weights? Checks made before any sampling, in the user's words.

SSP-IR is trained on an epsilon-prediction SD1.5 or SD2.1-base UNet of one exact shape. A model of another
family (SDXL, SD3, ...), another size (a full-size SSP-IR file on a small test model), or another prediction
(SD2.1-768 predicts v) used to load and fail deep inside a later node, or worse, sample the wrong model.
These functions take plain data (ComfyUI's detected config and class names, safetensors header shapes), so
they are tested without ComfyUI; the nodes call them at the loader or at Apply SSP-IR.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

BASE_WORDS = {"sd15": "SD1.5", "sd21": "SD2.1-base"}
# ComfyUI 0.3.75 comfy/supported_models.py class names (a MODEL's model_config), said as users say them
COMFY_MODEL_WORDS = {
    "SD15": "SD1.5",
    "SD15_instructpix2pix": "SD1.5 InstructPix2Pix",
    "SD20": "SD2.x",
    "SD21UnclipL": "SD2.1 unCLIP",
    "SD21UnclipH": "SD2.1 unCLIP",
    "SD_X4Upscaler": "the SD x4 upscaler",
    "LotusD": "Lotus-D (SD2.x)",
    "SDXL": "SDXL",
    "SDXLRefiner": "the SDXL refiner",
    "SSD1B": "SDXL (SSD-1B)",
    "Segmind_Vega": "SDXL (Segmind Vega)",
    "KOALA_700M": "SDXL (KOALA)",
    "KOALA_1B": "SDXL (KOALA)",
    "SDXL_instructpix2pix": "SDXL InstructPix2Pix",
    "SVD_img2vid": "Stable Video Diffusion",
    "Stable_Zero123": "Stable Zero123",
    "Stable_Cascade_C": "Stable Cascade",
    "SD3": "SD3",
    "Flux": "Flux",
}
# ComfyUI 0.3.75 comfy/model_sampling.py prediction classes: a MODEL's model_sampling derives from one of them
PREDICTIONS = {
    "EPS": "epsilon",
    "V_PREDICTION": "v-prediction",
    "EDM": "EDM",
    "V_PREDICTION_EDM": "v-prediction (EDM)",
    "X0": "x0",
    "IMG_TO_IMG": "x0 (img2img)",
    "CONST": "flow (rectified)",
    "COSMOS_RFLOW": "flow (Cosmos)",
}
_SPECIFIC_FIRST = ("V_PREDICTION_EDM", "EDM", "V_PREDICTION", "IMG_TO_IMG", "X0", "COSMOS_RFLOW", "CONST", "EPS")


def base_words(base: str) -> str:
    return BASE_WORDS.get(base, "a custom-size UNet" if base == "custom" else f"base {base!r}")


def model_words(class_names: Sequence[str]) -> str:
    """How to name a ComfyUI MODEL from its ``model_config``'s class and base-class names (most specific first)."""
    for name in class_names:
        if name in COMFY_MODEL_WORDS:
            return COMFY_MODEL_WORDS[name]
    return class_names[0] if class_names else "an unknown model"


def family(words: str) -> str:
    """'SD1.5', 'SD2', 'SDXL' or the words themselves: what a size difference is compared within."""
    for prefix, fam in (("SD1.5", "SD1.5"), ("SD2", "SD2"), ("SDXL", "SDXL")):
        if words.startswith(prefix):
            return fam
    return words


def prediction(sampling_class_names: Sequence[str]) -> str:
    """The ComfyUI prediction class (``EPS``, ``V_PREDICTION``, ...) among a ``model_sampling``'s class names."""
    names = set(sampling_class_names)
    return next((p for p in _SPECIFIC_FIRST if p in names), "unknown")


def native_model_problem(
    patch_name: str,
    patch_base: str,
    expected: Mapping[str, Any],
    unet_config: Mapping[str, Any] | None,
    model_classes: Sequence[str],
    sampling_classes: Sequence[str],
) -> str | None:
    """Why Apply SSP-IR cannot use this MODEL with this patch (None when it can), naming both sides.

    ``expected``: :func:`sspir_core.native.layout.expected_ldm_config` of the patch; ``unet_config``: ComfyUI's
    detected one (None: not an SD-style UNet); the class names are the MRO names of ``model_config`` and
    ``model_sampling``.
    """
    from .ldm_layout import ldm_mismatch

    trained = base_words(patch_base)
    words = model_words(model_classes)
    advice = (
        f"Load the {trained} checkpoint the SSP-IR weights were trained on (SD1.5 weights need an SD1.5 "
        "MODEL, SD2.1 weights an SD2.1-base MODEL: epsilon prediction, 512 px)."
    )
    if unet_config is None:
        return (
            f"the SSP-IR patch {patch_name} was trained on {trained}, but this MODEL is {words} (not an SD1.x/2.x "
            f"UNet with input/output blocks). {advice}"
        )
    kind = prediction(sampling_classes)
    if kind != "EPS":
        what = PREDICTIONS.get(kind, kind)
        hint = (
            " (e.g. SD2.1-768-v; or a ModelSamplingDiscrete node set to v_prediction)" if kind == "V_PREDICTION" else ""
        )
        return (
            f"the SSP-IR patch {patch_name} was trained on {trained} with epsilon prediction, but this MODEL "
            f"({words}) uses {what}{hint}. {advice}"
        )
    diff = ldm_mismatch(expected, unet_config)
    if unet_config.get("adm_in_channels") is not None:
        diff.insert(0, f"adm_in_channels={unet_config.get('adm_in_channels')} (an SDXL-style UNet)")
    if not diff:
        return None
    same = family(words) == family(trained)
    said = f"{words} of another size" if same else words
    return (
        f"the SSP-IR patch {patch_name} was trained on {trained}, but this MODEL is {said}: {'; '.join(diff)}. "
        + advice
    )


def unet_shape_differences(
    unet_config: Mapping[str, Any], shapes: Mapping[str, Sequence[int]], ldm: bool = True
) -> list[str]:
    """Every UNet weight whose shape in a file (``shapes``: its header) differs from the one SSP-IR weights
    trained on a UNet with ``unet_config`` (diffusers) need; ``ldm``: the file uses LDM names, else diffusers'."""
    import torch

    from ..models.build import stock_unet_from_config
    from .ldm_layout import unet_key_to_ldm

    with torch.device("meta"):  # shapes only, nothing allocated
        unet = stock_unet_from_config(dict(unet_config))
    out = []
    for key, value in unet.state_dict().items():
        name = unet_key_to_ldm(key, unet_config) if ldm else key
        got = shapes.get(name)
        if got is None:
            out.append(f"{name} missing")
        elif list(got) != list(value.shape):
            out.append(f"{name} is {list(got)} (the SSP-IR weights need {list(value.shape)})")
    return out


def sd_unet_shapes(sd: str | Path) -> tuple[dict[str, list[int]], bool] | None:
    """(``{name: shape}``, LDM names?) of the UNet in an SD single file or diffusers folder, from safetensors
    headers only; None when there is no header to read (pickles, sharded folders)."""
    from .weights_file import safetensors_header

    path = Path(sd)
    if path.is_file() and path.suffix.lower() == ".safetensors":
        return {k: v["shape"] for k, v in safetensors_header(path).items()}, True
    files = sorted((path / "unet").glob("*.safetensors")) if path.is_dir() else []
    if len(files) == 1:
        return {k: v["shape"] for k, v in safetensors_header(files[0]).items()}, False
    return None


def _unet_words(shapes: Mapping[str, Sequence[int]], ldm: bool) -> str:
    """'UNet width W, text context C' read off a file's header shapes (conv_in and the first cross-attention)."""
    conv_in = shapes.get("model.diffusion_model.input_blocks.0.0.weight" if ldm else "conv_in.weight")
    context = next((s[1] for k, s in shapes.items() if k.endswith("attn2.to_k.weight") and len(s) == 2), None)
    width = conv_in[0] if conv_in else "?"
    return f"UNet width {width}, text context {context if context is not None else '?'}"


def check_sd_fits_sspir(
    sd: str | Path, sspir: str | Path, unet_config: Mapping[str, Any], base: str, sd_base: str
) -> None:
    """Refuse, naming both files, an SD model whose UNet is not the shape the compact SSP-IR file was trained on
    (only headers are read: a full-size SSP-IR file on a small SD model used to fail in Structure Processor)."""
    from ..errors import CheckpointError

    found = sd_unet_shapes(sd)
    if found is None:
        return
    diff = unet_shape_differences(unet_config, *found)
    if diff:
        more = f" and {len(diff) - 3} more" if len(diff) > 3 else ""
        trained = (
            f"UNet width {unet_config['block_out_channels'][0]}, text context {unet_config['cross_attention_dim']}"
        )
        raise CheckpointError(
            f"{Path(sspir).name} was trained on {base_words(base)} ({trained}), but base_model {Path(sd).name} is "
            f"{base_words(sd_base)} with a UNet of another shape ({_unet_words(*found)}): {'; '.join(diff[:3])}{more}. "
            "Pick the SD checkpoint the SSP-IR weights were trained on."
        )


def sd_v_prediction(sd: str | Path) -> str | None:
    """Where an SD model says it predicts v (SSP-IR needs epsilon), or None: a ``v_pred`` key in a single file
    (ComfyUI's marker for v-prediction files) or ``prediction_type`` in a diffusers folder's scheduler config."""
    import json

    path = Path(sd)
    if path.is_file() and path.suffix.lower() == ".safetensors":
        from .weights_file import safetensors_header

        return "it holds a 'v_pred' key" if "v_pred" in safetensors_header(path) else None
    config = path / "scheduler" / "scheduler_config.json"
    if path.is_dir() and config.is_file():
        try:
            kind = json.loads(config.read_text()).get("prediction_type")
        except (ValueError, AttributeError):
            return None
        return f"scheduler/scheduler_config.json says prediction_type {kind!r}" if kind == "v_prediction" else None
    return None
