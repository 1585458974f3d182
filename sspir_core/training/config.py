"""The training configuration: defaults are the official SSP-IR recipe (repository ``zyhrainbow/SSP-IR``).

Where each default comes from: ``train.sh`` passes fp16 mixed precision, 512 px, lr 5e-5, batch 16,
gradient accumulation 2, ``null_text_ratio`` 0.5 (caption dropout) and 100k steps; ``train.py``'s argparse
defaults give the rest: constant LR schedule, AdamW betas (0.9, 0.999), weight decay 1e-2, eps 1e-8 and a
grad-norm clip of 1.0 (applied to the ControlNet + UNet parameters, see the trainer). ``--scale`` 4 and the
degradations are those of ``utils_data/make_paired_data.py`` (see :mod:`.degradations`).

One dataclass is the single source of truth: ``sspir train`` builds its flags from its fields (with the help
texts below), a config file (JSON, YAML or TOML) sets any of them, and flags given on the command line win.
The merged config is written to ``OUTPUT/train-config.json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import InputError

PRESETS = ("tiny-random",)
MIXED_PRECISION = ("no", "fp16", "bf16")
OPTIMIZERS = ("adamw", "adamw8bit")
TRAIN_MODES = ("multi-step", "one-step")
CAPTION_DROPOUT = {"multi-step": 0.5, "one-step": 0.0}
"""Default caption dropout per mode: the official ``null_text_ratio`` 0.5 (``train.sh``); OSEDiff never drops the
prompt (its VSD guidance would have no text to guide with)."""
OSEDIFF_NEGATIVE_PROMPT = (
    "painting, oil painting, illustration, drawing, art, sketch, cartoon, CG Style, 3D render, unreal engine, "
    "blurring, dirty, messy, worst quality, low quality, frames, watermark, signature, jpeg artifacts, deformed, "
    "lowres, over-smooth"
)
"""The VSD negative prompt of the training command in ``cswry/OSEDiff`` README.md (``--neg_prompt``)."""


@dataclass
class TrainConfig:
    output: str = ""
    data: list[str] = field(default_factory=list)
    captions: str | None = None
    preset: str | None = None
    sd: str | None = None
    clip_vision: str | None = None
    base: str | None = None
    init_sspir: str | None = None
    resolution: int = 512
    scale: int = 4
    usm_target: bool = True
    allow_gray: bool = False
    caption_dropout: float | None = None  # None: CAPTION_DROPOUT of the mode
    max_chunks: int = 4
    batch_size: int = 16
    grad_accum: int = 2
    max_steps: int = 100_000
    lr: float = 5e-5
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 1e-2
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0
    optimizer: str = "adamw"
    mixed_precision: str = "fp16"
    gradient_checkpointing: bool = False
    checkpoint_every: int = 1000
    checkpoints_total_limit: int | None = None
    resume: str | None = None
    validate_every: int = 1000
    validation_images: str | None = None
    validation_count: int = 4
    validation_steps: int = 20
    log_every: int = 1
    report_to: str = "tensorboard"
    num_workers: int = 2
    seed: int = 0
    cpu: bool = False
    trace_samples: bool = False
    # one-step mode (extension after OSEDiff; defaults from cswry/OSEDiff train_osediff.py, 0 = loss off)
    mode: str = "multi-step"
    lambda_l2: float = 1.0
    lambda_lpips: float = 2.0
    lambda_vsd: float = 1.0
    lambda_vsd_lora: float = 1.0
    lambda_rgb: float = 0.1
    lambda_fft: float = 0.01
    cfg_vsd: float = 7.5
    vsd_negative_prompt: str = OSEDIFF_NEGATIVE_PROMPT
    lora_rank: int = 4
    lpips_weights: str | None = None

    def validate(self) -> TrainConfig:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise InputError(msg)

        need(bool(self.output), "--output is required (the folder checkpoints and metrics.jsonl go to)")
        need(
            bool(self.data),
            "--data is required: a folder in the official layout (gt/, sr_bicubic/) or GT image folders",
        )
        need(self.preset in (None, *PRESETS), f"--preset must be one of {', '.join(PRESETS)}")
        need(
            self.preset is not None or bool(self.sd and self.clip_vision),
            "--sd and --clip-vision are required (the frozen SD1.5/2.1 and CLIP ViT-L/14 weights), "
            "or --preset tiny-random for toy models",
        )
        need(self.mixed_precision in MIXED_PRECISION, f"--mixed-precision must be one of {', '.join(MIXED_PRECISION)}")
        need(self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}")
        need(
            self.resolution >= 16 and self.resolution % 8 == 0,
            f"--resolution must be a multiple of 8 >= 16, got {self.resolution}",
        )
        need(
            self.resolution % self.scale == 0,
            f"--resolution {self.resolution} must be a multiple of --scale {self.scale}",
        )
        need(self.mode in TRAIN_MODES, f"--mode must be one of {', '.join(TRAIN_MODES)}")
        if self.caption_dropout is None:
            self.caption_dropout = CAPTION_DROPOUT[self.mode]
        need(0.0 <= self.caption_dropout <= 1.0, f"--caption-dropout must be in [0, 1], got {self.caption_dropout}")
        for name in (
            "batch_size",
            "grad_accum",
            "max_steps",
            "checkpoint_every",
            "validate_every",
            "log_every",
            "max_chunks",
            "scale",
        ):
            need(getattr(self, name) >= 1, f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        need(self.num_workers >= 0, "--num-workers must be >= 0")
        need(
            self.checkpoints_total_limit is None or self.checkpoints_total_limit >= 1,
            f"--checkpoints-total-limit must be >= 1 (leave it out to keep every checkpoint), got "
            f"{self.checkpoints_total_limit}",
        )
        for name in (
            "lambda_l2",
            "lambda_lpips",
            "lambda_vsd",
            "lambda_vsd_lora",
            "lambda_rgb",
            "lambda_fft",
            "cfg_vsd",
        ):
            need(getattr(self, name) >= 0, f"--{name.replace('_', '-')} must be >= 0 (0 turns the loss off)")
        need(self.lora_rank >= 1, f"--lora-rank must be >= 1, got {self.lora_rank}")
        return self

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


HELP: dict[str, str] = {
    "output": "output folder: checkpoint-N/, metrics.jsonl, validation/ grids",
    "data": "official paired folder (gt/, sr_bicubic/, gt_llm_caption/) or GT-only image folder(s) "
    "(degraded on the fly with Real-ESRGAN's second-order pipeline)",
    "captions": "folder of <stem>.txt captions for GT-only folders (`sspir caption` writes them); default empty",
    "preset": "tiny-random: toy random SD/CLIP parts, trains on the CPU in seconds",
    "sd": "Stable Diffusion 1.5/2.1-base weights (single file or diffusers folder); frozen",
    "clip_vision": "CLIP ViT-L/14-224 vision weights; frozen",
    "base": "sd15 or sd21 (default: detected)",
    "init_sspir": "start from these SSP-IR weights (checkpoint-N/ or compact file) instead of a fresh init",
    "resolution": "crop size in pixels (official 512)",
    "scale": "degradation scale factor for GT-only data (official x4)",
    "usm_target": "train towards the USM-sharpened GT for GT-only data (Real-ESRGAN); --no-usm-target to disable",
    "allow_gray": "train on grayscale images too (skipped by default)",
    "caption_dropout": "probability of an empty caption (default: the official 0.5 in multi-step mode, 0 in one-step "
    "mode, as OSEDiff)",
    "max_chunks": "long-prompt chunks of 75 tokens (as at inference)",
    "batch_size": "images per process per micro-step (official 16)",
    "grad_accum": "micro-steps per optimisation step (official 2)",
    "max_steps": "optimisation steps (official 100000)",
    "lr": "learning rate (official 5e-5)",
    "lr_scheduler": "diffusers scheduler name: constant, constant_with_warmup, linear, cosine, ...",
    "lr_warmup_steps": "warm-up steps",
    "adam_beta1": "AdamW beta1",
    "adam_beta2": "AdamW beta2",
    "weight_decay": "AdamW weight decay (official 1e-2)",
    "adam_eps": "AdamW epsilon",
    "max_grad_norm": "gradient-norm clip (official 1.0)",
    "optimizer": "adamw or adamw8bit (needs bitsandbytes)",
    "mixed_precision": "no, fp16 (official) or bf16",
    "gradient_checkpointing": "recompute activations in the backward pass (less memory, ~30%% slower)",
    "checkpoint_every": "save OUTPUT/checkpoint-N every this many steps (and at the end)",
    "checkpoints_total_limit": "keep at most this many checkpoints (the oldest is deleted only after the new one is "
    "complete, so the disk needs room for one more)",
    "resume": "'latest' (the newest checkpoint that checks out; stops if checkpoints exist but none is usable), "
    "a checkpoint-N folder, or 'none' (start over at step 1): continue exactly (weights, optimizer, "
    "scheduler, data position)",
    "validate_every": "restore a few validation images every this many steps into OUTPUT/validation/",
    "validation_images": "folder of LQ images for validation (default: the first training samples)",
    "validation_count": "number of validation images",
    "validation_steps": "sampling steps for validation restorations",
    "log_every": "print a log line every this many steps (metrics.jsonl gets every step)",
    "report_to": "tensorboard, wandb, ..., all, or none (accelerate trackers)",
    "num_workers": "DataLoader worker processes",
    "seed": "run seed: data order, crops, degradations, noise and timesteps all derive from it",
    "cpu": "train on the CPU even when a GPU is present",
    "mode": "multi-step (the paper's SSP-IR, 50 sampling steps) or one-step (an extension after OSEDiff: one UNet "
    "evaluation at t=999 on the LQ latent, LoRA on the UNet, pixel MSE + LPIPS + VSD losses)",
    "lambda_l2": "one-step: weight of the pixel MSE (OSEDiff 1.0; 0 = off)",
    "lambda_lpips": "one-step: weight of LPIPS-VGG (OSEDiff 2.0; 0 = off, then no LPIPS files are needed)",
    "lambda_vsd": "one-step: weight of the VSD regulariser against frozen SD (OSEDiff 1.0; 0 = off)",
    "lambda_vsd_lora": "one-step: weight of the fake-score LoRA's diffusion loss (OSEDiff 1.0; 0 with --lambda-vsd 0 "
    "drops the VSD UNet)",
    "lambda_rgb": "one-step: weight of the Processor's RGB L1 per scale (SSP-IR 0.1)",
    "lambda_fft": "one-step: weight of the Processor's FFT L1 per scale (SSP-IR 0.01)",
    "cfg_vsd": "one-step: CFG of the real SD score in VSD (OSEDiff 7.5)",
    "vsd_negative_prompt": "one-step: the negative prompt of VSD's CFG (default: OSEDiff's training command's; "
    "'' for none)",
    "lora_rank": "one-step: LoRA rank of the UNet and of the VSD fake score (OSEDiff 4)",
    "lpips_weights": "one-step: folder (torch-hub layout) with checkpoints/vgg16-397923af.pth and "
    "pyiqa/LPIPS_v0.1_vgg-a78928a0.pth (default: $SSPIR_EVAL_WEIGHTS or torch's hub folder)",
    "trace_samples": "write OUTPUT/samples/rank-R.jsonl: the images each process saw per step and a checksum of "
    "its final weights (to check data sharding and replica consistency)",
}


def config_fields() -> list[Any]:
    return list(fields(TrainConfig))


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON, YAML or TOML config file into a dict of TrainConfig fields (unknown keys are an error)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--config {path}: file not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except Exception as e:  # each parser has its own error type
        raise InputError(f"--config {path}: cannot parse ({type(e).__name__}: {e})") from e
    if not isinstance(data, dict):
        raise InputError(f"--config {path}: expected a mapping of option names to values")
    known = {f.name for f in config_fields()}
    data = {k.replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(f"--config {path}: unknown option(s) {', '.join(unknown)}")
    if isinstance(data.get("data"), str):
        data["data"] = [data["data"]]
    return data
