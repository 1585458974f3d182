"""Stable Diffusion base components (UNet, VAE, text encoder, tokenizer) from local files only.

Users keep SD1.5 / SD2.1-base as one LDM-layout file in ComfyUI's ``models/checkpoints`` (the hub repos were
pulled), or as a diffusers folder. Both load here with ``local_files_only=True`` and the bundled configs.
A file is checked before conversion (model family, base, every needed key) so that errors name the file
and say what to do instead of surfacing as diffusers' "Cannot copy out of meta tensor".
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import CheckpointError
from .bundled_configs import (
    CLIP_MAX_LENGTH,
    CLIP_VOCAB_SIZE,
    SD_CONFIGS_METADATA,
    check_base,
    component_config,
    embedded_config_dir,
    read_json,
    sd_config_dir,
)
from .ldm_layout import (
    OPEN_CLIP_TEXT_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    expected_ldm_keys,
)
from .weights_file import WeightsFile

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

PARTS = ("unet", "vae", "text_encoder")
BASE_NAMES = {"sd15": "Stable Diffusion 1.x", "sd21": "Stable Diffusion 2.x"}
_PART_PREFIXES = {
    "unet": (UNET_PREFIX,),
    "vae": (VAE_PREFIX,),
    "text_encoder": ("cond_stage_model.",),
}
_CONTEXT_KEY = UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
_CONTEXT_WIDTH_TO_BASE = {768: "sd15", 1024: "sd21"}
_MAX_NAMED_KEYS = 5


@dataclass
class SDComponents:
    """The frozen SD parts SSP-IR builds on; a part not asked for is None."""

    unet: UNet2DConditionModel | None
    vae: AutoencoderKL | None
    text_encoder: CLIPTextModel | None
    tokenizer: CLIPTokenizer
    scheduler_config: dict[str, Any]
    base: str


def _has_prefix(keys: Sequence[str], *prefixes: str) -> bool:
    return any(k.startswith(prefixes) for k in keys)


def _reject_other_families(weights: WeightsFile) -> None:
    """Raise for files that are not SD1.x/SD2.x checkpoints, saying what they look like."""
    keys = weights.keys()
    path = weights.path
    advice = "SSP-IR needs a Stable Diffusion 1.5 or 2.1-base checkpoint."
    if _has_prefix(keys, "conditioner.embedders.") or UNET_PREFIX + "label_emb.0.0.weight" in weights:
        raise CheckpointError(f"{path} is an SDXL checkpoint (it has conditioner.embedders.*/label_emb keys). {advice}")
    if _has_prefix(keys, UNET_PREFIX + "joint_blocks.", "joint_blocks."):
        raise CheckpointError(f"{path} is a Stable Diffusion 3 checkpoint (joint_blocks keys). {advice}")
    if _has_prefix(keys, UNET_PREFIX + "double_blocks.", "double_blocks."):
        raise CheckpointError(f"{path} is a Flux checkpoint (double_blocks keys). {advice}")
    if _has_prefix(keys, UNET_PREFIX, VAE_PREFIX, "cond_stage_model."):
        return
    if _has_prefix(keys, "down_blocks.", "mid_block.", "conv_in."):
        what = "a diffusers-format UNet weights file; pass the diffusers folder that holds model_index.json"
    elif _has_prefix(keys, "encoder.down", "decoder.up"):
        what = "a standalone VAE file, not a full checkpoint"
    elif _has_prefix(keys, "vision_model.", "visual."):
        what = "a CLIP vision model; load it with load_clip_vision (ComfyUI folder models/clip_vision)"
    else:
        what = f"not a Stable Diffusion checkpoint (first keys: {', '.join(keys[:3]) or 'none'})"
    raise CheckpointError(f"{path} is {what}. {advice}")


def detect_base(weights: WeightsFile) -> tuple[str | None, str]:
    """Guess "sd15"/"sd21" from an LDM-layout file, with the evidence; None if it cannot tell.

    SD2.x 768-v files have the same keys as 2.1-base: the bundled SD2.1 config (epsilon) fits only the base.
    """
    _reject_other_families(weights)
    keys = weights.keys()
    if _has_prefix(keys, "cond_stage_model.transformer."):
        return "sd15", "CLIP ViT-L text encoder keys cond_stage_model.transformer.*"
    if _has_prefix(keys, OPEN_CLIP_TEXT_PREFIX):
        return "sd21", "OpenCLIP text encoder keys cond_stage_model.model.*"
    shape = weights.shape(_CONTEXT_KEY)
    if shape is not None and shape[-1] in _CONTEXT_WIDTH_TO_BASE:
        return _CONTEXT_WIDTH_TO_BASE[shape[-1]], f"cross-attention context width {shape[-1]}"
    return None, "no text encoder keys and no standard cross-attention width"


def _resolve_base(requested: str | None, detected: str | None, evidence: str, source: Path) -> str:
    if requested is not None:
        check_base(requested)
        if detected is not None and detected != requested:
            raise CheckpointError(
                f"{source} is a {BASE_NAMES[detected]} checkpoint ({evidence}), but base={requested!r} was "
                f"requested: pass base={detected!r}, or leave base unset to detect it."
            )
        return requested
    if detected is None:
        raise CheckpointError(
            f"Cannot tell whether {source} is SD1.5 or SD2.1 ({evidence}): pass base='sd15' or 'sd21'."
        )
    return detected


def _check_parts(parts: Sequence[str]) -> tuple[str, ...]:
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise CheckpointError(f"Unknown parts {unknown or list(parts)}: choose from {', '.join(PARTS)}.")
    return tuple(dict.fromkeys(parts))


def _skeleton_keys(part: str, config: dict[str, Any]) -> list[str]:
    """Parameter names of a component built on the meta device (no memory, no weights)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        if part == "unet":
            model = UNet2DConditionModel.from_config(config)
        elif part == "vae":
            model = AutoencoderKL.from_config(config)
        else:
            model = CLIPTextModel(CLIPTextConfig(**config))
    return list(model.state_dict())


def _check_keys(weights: WeightsFile, part: str, config: dict[str, Any], base: str) -> None:
    expected = expected_ldm_keys(part, _skeleton_keys(part, config), config, base)
    missing = [k for k in expected if k not in weights]
    if missing:
        named = ", ".join(missing[:_MAX_NAMED_KEYS]) + (", ..." if len(missing) > _MAX_NAMED_KEYS else "")
        raise CheckpointError(
            f"{weights.path} lacks {len(missing)} of the {len(expected)} {part} weights a {BASE_NAMES[base]} "
            f"checkpoint has (first missing: {named}). The file is incomplete or pruned, or is not a "
            f"{base} checkpoint: use a complete {base} file."
        )
    if part == "unet":
        in_shape = weights.shape(UNET_PREFIX + "input_blocks.0.0.weight")
        if in_shape is not None and in_shape[1] != config["in_channels"]:
            raise CheckpointError(
                f"{weights.path} has a UNet with {in_shape[1]} input channels (an inpainting, depth or upscaler "
                f"model?), but {base} text-to-image needs {config['in_channels']}: use the plain base checkpoint."
            )


def load_tokenizer(folder: str | Path) -> CLIPTokenizer:
    """A CLIP tokenizer from a folder, checked: a folder without vocab files would load silently broken."""
    from transformers import CLIPTokenizer

    try:
        tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise CheckpointError(f"Could not load the CLIP tokenizer from {folder}: {exc}") from exc
    if len(tokenizer) != CLIP_VOCAB_SIZE or tokenizer.model_max_length != CLIP_MAX_LENGTH:
        raise CheckpointError(
            f"Tokenizer in {folder} has {len(tokenizer)} tokens and max length {tokenizer.model_max_length}; "
            f"a CLIP tokenizer has {CLIP_VOCAB_SIZE} and {CLIP_MAX_LENGTH}. Its vocab.json/merges.txt are missing "
            "or wrong."
        )
    return tokenizer


def _wrap_load_error(source: Path, part: str, exc: Exception) -> CheckpointError:
    return CheckpointError(f"Could not load the {part} from {source}: {type(exc).__name__}: {exc}")


def _components(models: dict[str, Any], folder: Path, base: str) -> SDComponents:
    """Bundle loaded models with the tokenizer and scheduler config of a diffusers-layout ``folder``."""
    tokenizer_dir = folder / "tokenizer"
    tokenizer = load_tokenizer(tokenizer_dir if tokenizer_dir.is_dir() else sd_config_dir(base) / "tokenizer")
    return SDComponents(
        unet=models.get("unet"),
        vae=models.get("vae"),
        text_encoder=models.get("text_encoder"),
        tokenizer=tokenizer,
        scheduler_config=read_json(folder / "scheduler" / "scheduler_config.json"),
        base=base,
    )


@contextlib.contextmanager
def _no_empty_fp32_warning() -> Iterator[None]:
    """``from_single_file(torch_dtype=...)`` builds the model in that dtype, then calls ``.to(dtype)`` again, and
    diffusers' ``to`` warns "There are modules ... that should be kept in float32: []" even when the list is
    empty: a warning per part in every run that means nothing. Only that record is dropped, only while loading."""
    logger = logging.getLogger("diffusers.models.modeling_utils")

    def keep(record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def _checked_single_file(
    path: Path, base: str | None, parts: tuple[str, ...], config_dir: Path | None
) -> tuple[WeightsFile, str, Path, dict[str, dict[str, Any]]]:
    """Every check of a single file that needs no tensor: family, base, and each part's keys (from the header)."""
    weights = WeightsFile(path)
    detected, evidence = detect_base(weights)
    base = _resolve_base(base, detected, evidence, path)
    embedded = weights.metadata().get(SD_CONFIGS_METADATA)
    if config_dir is None:
        config_dir = embedded_config_dir(embedded, base) if embedded else sd_config_dir(base)
    configs = {part: component_config(config_dir, part) for part in parts}
    for part in parts:  # every check before any (slow) conversion
        _check_keys(weights, part, configs[part], base)
    return weights, base, Path(config_dir), configs


def _load_single_file(
    path: Path, base: str | None, parts: tuple[str, ...], config_dir: Path | None, dtype: torch.dtype
) -> SDComponents:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel

    weights, base, config_dir, configs = _checked_single_file(path, base, parts, config_dir)
    models: dict[str, Any] = {}
    for part in parts:
        state = weights.tensors(_PART_PREFIXES[part])
        common = {
            "config": str(config_dir),
            "subfolder": part,
            "local_files_only": True,
            "torch_dtype": dtype,
        }
        try:
            with _no_empty_fp32_warning():
                if part == "unet":
                    models[part] = UNet2DConditionModel.from_single_file(state, **common)
                elif part == "vae":
                    models[part] = AutoencoderKL.from_single_file(state, **common)
                else:
                    models[part] = create_diffusers_clip_model_from_ldm(CLIPTextModel, checkpoint=state, **common)
        except Exception as exc:
            raise _wrap_load_error(path, part, exc) from exc
        del state
    return _components(models, Path(config_dir), base)


def _folder_base(folder: Path) -> str | None:
    """Base of a diffusers folder from its UNet's cross-attention width (768 SD1.x, 1024 SD2.x)."""
    unet_config = folder / "unet" / "config.json"
    if not unet_config.is_file():
        return None
    width = read_json(unet_config).get("cross_attention_dim")
    return _CONTEXT_WIDTH_TO_BASE.get(width) if isinstance(width, int) else None


def _variant(subfolder: Path) -> str | None:
    """Return "fp16" when a diffusers subfolder ships only fp16-variant weights, else None."""
    names = [p.name for p in subfolder.glob("*.safetensors")] + [p.name for p in subfolder.glob("*.bin")]
    if names and all(".fp16." in n for n in names):
        return "fp16"
    return None


def _load_diffusers_folder(folder: Path, base: str | None, parts: tuple[str, ...], dtype: torch.dtype) -> SDComponents:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from ..captioners.local_model import dtype_kwarg  # torch_dtype= or dtype=, whichever transformers reads

    if not (folder / "model_index.json").is_file():
        raise CheckpointError(
            f"{folder} is a folder but not a diffusers pipeline (no model_index.json): pass a single-file "
            ".safetensors/.ckpt checkpoint or a diffusers folder."
        )
    detected = _folder_base(folder)
    base = _resolve_base(base, detected, f"unet cross_attention_dim of {folder}", folder)
    for part in (*parts, "scheduler"):
        if not (folder / part).is_dir():
            raise CheckpointError(f"Diffusers folder {folder} has no {part}/ subfolder: the copy is incomplete.")

    models: dict[str, Any] = {}
    for part in parts:
        sub = folder / part
        try:
            if part == "text_encoder":
                models[part] = CLIPTextModel.from_pretrained(
                    str(folder), subfolder=part, local_files_only=True, variant=_variant(sub), **dtype_kwarg(dtype)
                )
            else:
                cls = UNet2DConditionModel if part == "unet" else AutoencoderKL
                models[part] = cls.from_pretrained(
                    str(folder),
                    subfolder=part,
                    local_files_only=True,
                    torch_dtype=dtype,
                    variant=_variant(sub),
                )
        except Exception as exc:
            raise _wrap_load_error(folder, part, exc) from exc
    return _components(models, folder, base)


def check_sd_source(source: str | Path, base: str | None = None, parts: Sequence[str] = PARTS) -> str:
    """What :func:`load_sd_components` checks before loading, without reading a tensor; returns the base.

    Single files: header integrity (tensor bytes inside the file), family, base and each part's keys.
    Diffusers folders: ``model_index.json``, the part subfolders, and each weights file's header.
    For a loader node: a damaged or wrong file fails there, naming the file, not at the first node that runs.
    """
    from .weights_file import check_weights_file

    parts = _check_parts(parts)
    path = Path(source).expanduser()
    if path.is_file():
        check_weights_file(path)
        return _checked_single_file(path, base, parts, None)[1]
    if not path.is_dir():
        raise CheckpointError(f"Checkpoint not found: {path}")
    if not (path / "model_index.json").is_file():
        raise CheckpointError(f"{path} is a folder but not a diffusers pipeline (no model_index.json).")
    base = _resolve_base(base, _folder_base(path), f"unet cross_attention_dim of {path}", path)
    for part in parts:
        files = sorted(f for pattern in ("*.safetensors", "*.bin") for f in (path / part).glob(pattern))
        if not files:
            raise CheckpointError(
                f"Diffusers folder {path} has no {part} weights in {path / part}: the copy is incomplete."
            )
        for f in files:
            check_weights_file(f)
    return base


def load_sd_components(
    source: str | Path,
    base: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    parts: Sequence[str] = PARTS,
    config_dir: str | Path | None = None,
) -> SDComponents:
    """Load SD1.5 / SD2.1-base components from a local LDM single file or a diffusers folder; never the hub.

    ``source``: a ``.safetensors`` (or ``.ckpt``/``.pt``, read with ``weights_only=True``) file in the original
    LDM key layout, such as the ones in ComfyUI ``models/checkpoints``; or a diffusers folder.
    ``base``: "sd15" or "sd21"; detected from the file when None, and checked against it when given.
    ``parts``: which of "unet", "vae", "text_encoder" to load (skip "unet" when the SSP-IR checkpoint has one);
    tokenizer and scheduler config always come back.
    ``config_dir``: a diffusers-layout config folder for single files (default: the configs the file carries in
    its ``sspir_sd_configs`` metadata, as tiny demo files do, else the bundled full-size ones).
    Raises ``CheckpointError`` naming the file for a wrong family/base, missing keys or a damaged file.
    """
    parts = _check_parts(parts)
    path = Path(source).expanduser()
    if path.is_dir():
        components = _load_diffusers_folder(path, base, parts, dtype)
    elif path.is_file():
        components = _load_single_file(path, base, parts, Path(config_dir) if config_dir else None, dtype)
    else:
        raise CheckpointError(
            f"Checkpoint not found: {path}. Put the SD1.5/SD2.1-base file in ComfyUI models/checkpoints "
            "or pass its full path."
        )
    target = torch.device(device)
    for part in PARTS:
        model = getattr(components, part)
        if model is None:
            continue
        if next(model.parameters()).device != target:  # diffusers warns on any .to(), even a no-op
            model = model.to(target)
        setattr(components, part, model.eval())
    return components


__all__ = ["PARTS", "SDComponents", "detect_base", "load_sd_components", "load_tokenizer"]
