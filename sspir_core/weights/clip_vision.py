"""CLIP ViT-L/14 vision tower (SSP-IR's semantic image prior) from local files, in two weight formats.

SSP-IR feeds the refine layer with the patch tokens of the last transformer layer *before* the post
LayerNorm (``hidden_states[-1][:, 1:]``: 256 x 1024 for ViT-L/14 at 224 px). ComfyUI users keep this model in
``models/clip_vision`` either in transformers layout (``vision_model.*`` keys) or in OpenAI/OpenCLIP layout
(``visual.*`` keys); both give the same tokens here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, InputError
from .bundled_configs import CLIP_VISION_CONFIG, CLIP_VISION_CONFIG_METADATA, read_json
from .weights_file import WeightsFile

# The CLIP normalisation SSP-IR was trained with, as typed in the official training data code
# (zyhrainbow/SSP-IR dataloaders/paired_dataset.py: its third std is 0.275777, OpenAI's 0.27577711, a 4e-7
# relative difference). The official test script's ImageNet values are a bug.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.275777)

_KNOWN_WIDTHS = {768: "ViT-B", 1024: "ViT-L", 1280: "ViT-H/14", 1664: "ViT-bigG/14"}
_HF_PREFIX = "vision_model."
_OPEN_CLIP_PREFIX = "visual."


class ClipVisionEncoder(nn.Module):
    """Images in [0, 1] -> last-layer patch tokens without post-LayerNorm, ``[B, (size/patch)^2, width]``.

    Preprocessing is SSP-IR's training one (``dataloaders/paired_dataset.py``): squash-resize (no crop,
    aspect ratio not kept) to the model's input size with plain bicubic (no antialiasing), clamp to [0, 1],
    then CLIP mean/std normalisation; the Refine layer learned on exactly these tokens.
    """

    def __init__(self, tower: nn.Module, weight_format: str, image_size: int, patch_size: int, width: int):
        super().__init__()
        if weight_format not in ("transformers", "open_clip"):
            raise ValueError(f"unknown weight format {weight_format!r}")
        self.tower = tower
        self.weight_format = weight_format
        self.image_size = image_size
        self.patch_size = patch_size
        self.width = width
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Squash-resize to ``image_size`` (bicubic, no antialias), clamp to [0, 1], normalise (CLIP mean/std).

        As the official ``PairedPromptDataset`` feeds its CLIP tower: ``F.interpolate(lq, (224, 224),
        mode='bicubic')`` (torch's default ``antialias=False``, ``align_corners=False``), ``clamp(0, 1)``
        (bicubic overshoots at edges), ``Normalize(clip_mean, clip_std)``. Training and inference both come here.

        The resize runs on the CPU whatever the model's device: bicubic is missing from some backends' older
        builds (Apple MPS), it is cheap next to the tower, and the tokens then do not depend on the device's
        resize kernel. Only the 224 px result travels to the device.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise InputError(f"CLIP vision expects images [B, 3, H, W] in [0, 1]; got shape {tuple(images.shape)}.")
        x = images.to(device="cpu", dtype=torch.float32)
        if x.shape[-2:] != (self.image_size, self.image_size):  # same size: bicubic would be the identity
            size = (self.image_size, self.image_size)
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=False)
        return (x.clamp(0.0, 1.0).to(self.mean.device) - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.preprocess(images).to(next(self.tower.parameters()).dtype)
        if self.weight_format == "transformers":
            # transformers' last_hidden_state is the last encoder layer's output, before post_layernorm.
            return self.tower(pixel_values=pixels).last_hidden_state[:, 1:]
        out = self.tower.forward_intermediates(pixels, indices=1, intermediates_only=True, output_fmt="NLC")
        return out["image_intermediates"][-1]


def _describe(width: int, patch: int, image_size: int) -> str:
    name = _KNOWN_WIDTHS.get(width, f"width-{width} ViT")
    return f"{name} (width {width}, patch {patch}, {image_size} px)"


def _check_geometry(path: Path, config: dict[str, Any], patch_weight: torch.Size, n_positions: int) -> None:
    """Compare the file's tower geometry with the config; say what the file is when it differs."""
    width, patch = int(patch_weight[0]), int(patch_weight[-1])
    image_size = int(round(math.sqrt(n_positions - 1))) * patch
    want = (config["hidden_size"], config["patch_size"], config["image_size"])
    if (width, patch, image_size) != want:
        raise CheckpointError(
            f"{path} holds a {_describe(width, patch, image_size)} vision tower, but SSP-IR needs "
            f"{_describe(*want)}: use the CLIP ViT-L/14 (224 px) vision model (e.g. clip-vit-large-patch14)."
        )


def _fill_unused(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], unused: tuple[str, ...]) -> None:
    """Neutral values for the pooled-output head (never used here), so files pruned of it still load."""
    for key in unused:
        if key in expected and key not in state:
            ref = expected[key]
            state[key] = torch.ones(ref.shape) if key.endswith("weight") and ref.ndim == 1 else torch.zeros(ref.shape)


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], path: Path, unused: tuple[str, ...]) -> None:
    expected = model.state_dict()
    _fill_unused(state, expected, unused)
    missing = [k for k in expected if k not in state]
    if missing:
        raise CheckpointError(
            f"{path} lacks {len(missing)} vision-tower weights (first: {', '.join(missing[:5])}): "
            "the file is incomplete or not a CLIP vision model."
        )
    wrong = [k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)]
    if wrong:
        k = wrong[0]
        raise CheckpointError(
            f"{path}: {k} has shape {tuple(state[k].shape)}, expected {tuple(expected[k].shape)} from the config."
        )
    model.load_state_dict({k: state[k] for k in expected}, strict=True, assign=True)


def _build_transformers(config: dict[str, Any], state: dict[str, torch.Tensor], path: Path) -> nn.Module:
    from accelerate import init_empty_weights
    from transformers import CLIPVisionConfig, CLIPVisionModel

    with init_empty_weights(include_buffers=False):
        model = CLIPVisionModel(CLIPVisionConfig(**config))
    model_prefix = _HF_PREFIX if any(k.startswith(_HF_PREFIX) for k in model.state_dict()) else ""
    state = {model_prefix + k.removeprefix(_HF_PREFIX): v for k, v in state.items()}
    _check_geometry(
        path,
        config,
        state[model_prefix + "embeddings.patch_embedding.weight"].shape,
        state[model_prefix + "embeddings.position_embedding.weight"].shape[0],
    )
    _load_into(model, state, path, unused=tuple(model_prefix + f"post_layernorm.{p}" for p in ("weight", "bias")))
    return model


def _build_open_clip(config: dict[str, Any], state: dict[str, torch.Tensor], path: Path) -> nn.Module:
    import open_clip
    from accelerate import init_empty_weights

    state = {k.removeprefix(_OPEN_CLIP_PREFIX): v for k, v in state.items()}
    _check_geometry(path, config, state["conv1.weight"].shape, state["positional_embedding"].shape[0])
    if config["hidden_act"] != "quick_gelu":
        raise CheckpointError(f"Config for {path} must use quick_gelu (OpenAI CLIP); got {config['hidden_act']}.")
    vision_cfg = {
        "image_size": config["image_size"],
        "patch_size": config["patch_size"],
        "width": config["hidden_size"],
        "layers": config["num_hidden_layers"],
        "head_width": config["hidden_size"] // config["num_attention_heads"],
        "mlp_ratio": config["intermediate_size"] / config["hidden_size"],
    }
    # The text tower is unused: a one-layer stub keeps CLIP from building 123M idle parameters.
    text_cfg = {"context_length": 2, "vocab_size": 8, "width": 8, "heads": 1, "layers": 1}
    # The CLIP class itself, not create_model: create_model logs "initialized randomly" on the root logger
    # for a model built empty on purpose, and silencing that would touch process-wide logging.
    with init_empty_weights(include_buffers=False):
        clip = open_clip.CLIP(
            embed_dim=config["projection_dim"], vision_cfg=vision_cfg, text_cfg=text_cfg, quick_gelu=True
        )  # OpenAI weights were trained with QuickGELU
    tower = clip.visual
    if any(True for _ in tower.buffers()):
        raise CheckpointError("This open_clip_torch version adds buffers to the vision tower; not supported.")
    if not getattr(tower.transformer, "batch_first", True):
        raise CheckpointError("This open_clip_torch version is not supported: use open_clip_torch >= 2.32.")
    _load_into(tower, state, path, unused=("ln_post.weight", "ln_post.bias", "proj"))
    return tower


def split_formats(state: dict[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
    """Which layout a file uses, and only its vision-tower tensors."""
    hf = {
        k: v for k, v in state.items() if k.startswith(("embeddings.", "pre_layrnorm.", "encoder.", "post_layernorm."))
    }
    hf |= {k: v for k, v in state.items() if k.startswith(_HF_PREFIX)}
    if any(k.endswith("embeddings.patch_embedding.weight") for k in hf):
        return "transformers", {k: v for k, v in hf.items() if not k.endswith("position_ids")}
    if "visual.conv1.weight" in state:
        return "open_clip", {k: v for k, v in state.items() if k.startswith(_OPEN_CLIP_PREFIX)}
    if "conv1.weight" in state and "class_embedding" in state:
        return "open_clip", dict(state)
    return "unknown", {}


def load_clip_vision(
    source: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    config: str | Path | dict[str, Any] | None = None,
) -> ClipVisionEncoder:
    """Load the CLIP ViT-L/14 vision tower from a local file or transformers folder; never downloads.

    ``source``: a transformers-layout file (``vision_model.*`` keys, as in ComfyUI ``models/clip_vision``),
    an OpenAI/OpenCLIP-layout file (``visual.*`` keys), or a transformers folder (config.json + weights).
    ``config``: transformers ``CLIPVisionConfig`` fields (dict or JSON path); default the config the file carries
    in its ``sspir_clip_vision_config`` metadata (tiny demo files), else the bundled ViT-L/14 one.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        folder_config = read_json(path / "config.json") if (path / "config.json").is_file() else None
        weights = next((path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()), None)
        if weights is None:
            raise CheckpointError(
                f"{path} has no model.safetensors or pytorch_model.bin: pass the weights file itself."
            )
        if config is None and folder_config is not None:
            config = folder_config.get("vision_config", folder_config)
        path = weights
    weights = WeightsFile(path)
    embedded = weights.metadata().get(CLIP_VISION_CONFIG_METADATA)
    if config is None and embedded:
        try:
            config = json.loads(embedded)
        except ValueError as exc:
            raise CheckpointError(f"{path}: {CLIP_VISION_CONFIG_METADATA} metadata is not valid JSON: {exc}") from exc
    if config is None or isinstance(config, (str, Path)):
        config = read_json(config or CLIP_VISION_CONFIG)
    weight_format, state = split_formats(weights.tensors(("",)))
    if weight_format == "unknown":
        raise CheckpointError(
            f"{path} is not a CLIP vision model (no vision_model.embeddings.patch_embedding.weight or "
            "visual.conv1.weight): use the CLIP ViT-L/14 vision file from ComfyUI models/clip_vision."
        )
    build = _build_transformers if weight_format == "transformers" else _build_open_clip
    tower = build(dict(config), state, path).to(dtype=dtype).eval()
    encoder = ClipVisionEncoder(
        tower, weight_format, int(config["image_size"]), int(config["patch_size"]), int(config["hidden_size"])
    )
    return encoder.to(device=device).eval()
