"""The one-stage SSP-IR trainer on accelerate (one process to many nodes; DDP, or FSDP/DeepSpeed via accelerate config).

One optimisation step = ``grad_accum`` micro-steps. A micro-step: (degrade GT on the device when the data has no
LQ) -> frozen encoders (VAE latents of the GT, long-prompt text embedding, CLIP tokens of the LQ) -> noise at a
uniform timestep -> ControlNet + UNet predict the noise -> ``MSE + RGB + FFT`` losses.

As the official ``train.py`` (repository ``zyhrainbow/SSP-IR``): what trains (the whole ControlNet, the UNet
modules named ``image_attentions``/``pixel_attentions`` by ``--trainable_modules``, the ``TPBNet`` Refine
layer: ``params_to_optimize``), AdamW over all of them, ``clip_grad_norm_`` over the ControlNet + UNet
parameters only, the checkpoint layout of its ``save_model_hook`` (``unet/``, ``controlnet/``,
``refine/refine.pt``), and the loop of :mod:`.step`. The CLIP input is the one of
``dataloaders/paired_dataset.py`` (see ``ClipVisionEncoder.preprocess``).

Reproducibility: every random number of micro-step ``m`` on process ``r`` comes from generators seeded with
``(seed, m, r)`` and the data stream is positional (see :mod:`.data`), so a run resumed from ``checkpoint-N``
continues exactly as if it had never stopped. Checkpoint files are written atomically, ``trainer_state.json`` last,
and resuming checks a checkpoint first (:func:`read_state`), so a crash mid-save never blocks ``--resume latest``.

Longer than the pack's other modules on purpose: set-up, the accelerate loop, saving/resuming and validation
all act on one :class:`Trainer` state (accelerator, models, optimizer, data position), and exact resume depends
on their order; the parts that stand alone live beside it (:mod:`.step`, :mod:`.data`, :mod:`.config`, and the
one-step mode's :mod:`.one_step`, which the trainer calls at its few dispatch points).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InputError, SSPIRError
from ..files import write_text_atomic
from ..weights.weights_file import WeightsFile
from .config import TrainConfig
from .data import PositionSampler, TrainingSet, collate, derive_seed, gt_items, is_paired_layout, paired_items
from .degradations import DegradationSettings, degrade, usm_sharpen
from .models import TrainModule, build_pipeline
from .step import training_losses

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"
DATA_REPORT = "data-report.txt"
COMPACT_NAME = "sspir.safetensors"
STATE_KEYS = ("step", "micro_step", "world_size", "batch_size", "seed")
WEIGHT_FILES = ("unet/diffusion_pytorch_model.safetensors", "controlnet/diffusion_pytorch_model.safetensors",
                "refine/refine.pt", COMPACT_NAME)
_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class TrainResult:
    step: int
    last_checkpoint: Path | None
    losses: list[float]


def _numbered(output: Path) -> list[Path]:
    found = [p for p in output.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and p.name[len(CHECKPOINT_PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def list_checkpoints(output: Path) -> list[Path]:
    """Finished checkpoints (their trainer_state.json is written last), oldest first."""
    return [p for p in _numbered(output) if (p / STATE_FILE).is_file()]


def read_state(path: Path) -> dict:
    """The trainer state of a checkpoint after checking it can be resumed; an InputError naming the file if not.

    Checked: ``trainer_state.json`` (written last, atomically: missing means the save never finished) parses
    and holds every key; the SSP-IR weight files exist, are not empty, and the safetensors headers read.
    """
    file = path / STATE_FILE
    if not path.is_dir():
        raise InputError(f"--resume {path}: no such checkpoint folder")
    if not file.is_file():
        raise InputError(f"{path} is incomplete: no {STATE_FILE} (it is written last, so the save did not finish)")
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{file} is damaged ({type(e).__name__}: {e})") from None
    missing = [k for k in STATE_KEYS if k not in state] if isinstance(state, dict) else list(STATE_KEYS)
    if missing:
        raise InputError(f"{file} is damaged: no {', '.join(missing)}")
    for rel in WEIGHT_FILES:
        weights = path / rel
        if not weights.is_file() or weights.stat().st_size == 0:
            raise InputError(f"{path} is incomplete: {weights} is {'empty' if weights.is_file() else 'missing'}")
        if weights.suffix == ".safetensors":
            try:
                WeightsFile(weights)
            except SSPIRError as e:
                raise InputError(f"{path} is damaged: {e}") from None
    return state


def resolve_resume(cfg: TrainConfig, log: Callable[[str], None] = print) -> Path | None:
    """The checkpoint to resume from: ``latest`` is the newest one that passes :func:`read_state` (each damaged
    or unfinished newer one is skipped with a warning naming it); an explicit folder must pass it."""
    if not cfg.resume:
        return None
    if cfg.resume == "latest":
        for path in reversed(_numbered(Path(cfg.output))):
            try:
                read_state(path)
            except InputError as e:
                log(f"warning: --resume latest: skipping {path}: {e}")
                continue
            return path
        return None  # nothing yet: a fresh start
    path = Path(cfg.resume)
    read_state(path)
    return path


def build_dataset(cfg: TrainConfig, log: Callable[[str], None]) -> TrainingSet:
    """The training set, with what the listing left out (dangling links, captions without an image, unreadable
    folders) in its report. ``log`` is not handed to the set: each DataLoader worker would print a damaged file
    again; :meth:`Trainer.report_skipped` prints it once from the samples' ``skipped``."""
    roots = [Path(d) for d in cfg.data]
    problems: list[tuple[Path, str]] = []
    if len(roots) == 1 and is_paired_layout(roots[0]):
        items = paired_items(roots[0], problems)
    else:
        paired = [r for r in roots if is_paired_layout(r)]
        if paired:
            raise InputError(f"{paired[0]} is in the paired layout: give it alone as --data (not mixed with GT folders)")
        items = gt_items(roots, Path(cfg.captions) if cfg.captions else None, problems)
    return TrainingSet(items, cfg.resolution, cfg.seed, cfg.caption_dropout, cfg.allow_gray, log=_quiet,
                       problems=problems)


def _quiet(message: str) -> None:
    """The data set's mid-run log under the trainer (see :func:`build_dataset`)."""


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    kwargs = {"lr": cfg.lr, "betas": (cfg.adam_beta1, cfg.adam_beta2), "weight_decay": cfg.weight_decay,
              "eps": cfg.adam_eps}
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as e:
            raise InputError("--optimizer adamw8bit needs bitsandbytes: pip install bitsandbytes") from e
        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


class Trainer:
    """Builds everything from a :class:`TrainConfig` (data checked first), then :meth:`train` runs the loop."""

    def __init__(self, cfg: TrainConfig, log: Callable[[str], None] | None = None):
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        self.cfg = cfg.validate()
        self.out = Path(cfg.output)
        if cfg.report_to == "tensorboard" and not _importable("tensorboard"):
            print("warning: tensorboard is not installed (pip install tensorboard): not logging to it; metrics.jsonl "
                  "has every step", file=sys.stderr)
            cfg.report_to = "none"
        if cfg.mixed_precision == "fp16" and (cfg.cpu or not torch.cuda.is_available()):
            print("warning: fp16 mixed precision needs a CUDA GPU; training in fp32 on the CPU (--mixed-precision bf16 "
                  "also works on CPUs)", file=sys.stderr)
            cfg.mixed_precision = "no"
        trackers = None if cfg.report_to in ("", "none") else cfg.report_to
        self.accelerator = Accelerator(
            gradient_accumulation_steps=cfg.grad_accum, mixed_precision=cfg.mixed_precision, log_with=trackers,
            project_config=ProjectConfiguration(project_dir=str(self.out), logging_dir=str(self.out / "logs")),
            cpu=cfg.cpu,
        )
        acc = self.accelerator
        self._log = log or (lambda m: print(m, file=sys.stderr, flush=True))
        self.device = acc.device
        self.rank, self.world = acc.process_index, acc.num_processes
        self.resume_from = resolve_resume(cfg, self.log)  # before the models: a bad --resume fails at once
        self.dataset = build_dataset(cfg, self.log)
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            self.log(f"data: {self.dataset.report.summary()}")
            (self.out / DATA_REPORT).write_text(_report_lines("skipped", self.dataset.report.skipped)
                                                + _report_lines("note", self.dataset.report.notes), encoding="utf-8")
        self._reported: set[str] = set()
        self.frozen_dtype = _DTYPES[cfg.mixed_precision] if self.device.type != "cpu" or cfg.mixed_precision == "bf16" \
            else torch.float32
        self.pipe = build_pipeline(cfg, self.device, self.frozen_dtype)
        self.models = self.pipe.models
        self.models.to(self.device, torch.float32)
        params = self.models.set_trainable()
        if cfg.gradient_checkpointing:
            self.models.unet.enable_gradient_checkpointing()
            self.models.controlnet.enable_gradient_checkpointing()
        self.one_step = None  # the one-step mode's parts (see .one_step); None for the paper's trainer
        if cfg.mode == "one-step":
            from .one_step import OneStepTraining

            self.one_step = OneStepTraining(self, params)
            self.module, params = self.one_step.module, self.one_step.params
        else:
            self.module = TrainModule(self.models).train()
        self.params = params
        # official train.py: params_to_clip = list(controlnet.parameters()) + list(unet.parameters()); the Refine
        # layer trains unclipped
        refine = {id(p) for p in self.models.refine.parameters()}
        self.clip_params = [p for p in params if id(p) not in refine]
        from diffusers.optimization import get_scheduler

        from ..restore.schedulers import make_scheduler

        optimizer = make_optimizer(params, cfg)
        lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps * self.world,
                                     num_training_steps=cfg.max_steps * self.world)
        self.noise_scheduler = make_scheduler("ddpm", self.pipe.scheduler_config)
        self.module_p, self.optimizer, self.lr_scheduler = acc.prepare(self.module, optimizer, lr_scheduler)
        acc.register_save_state_pre_hook(self._save_hook)
        acc.register_load_state_pre_hook(self._load_hook)
        self.degradation = DegradationSettings(scale=cfg.scale)
        self.step = 0
        self.validation_batch: dict | None = None

    # ------------------------------------------------------------------ helpers

    def log(self, message: str) -> None:
        if self.accelerator.is_main_process:
            self._log(message)

    def _save_hook(self, models: list, weights: list, output_dir: str) -> None:
        """accelerate's save_state: write the SSP-IR weights in the official layout + compact, not a pickle."""
        from ..weights.checkpoint import save_compact, save_official_checkpoint

        if self.accelerator.is_main_process:
            save_official_checkpoint(self.models, output_dir)
            save_compact(self.models, Path(output_dir) / COMPACT_NAME)
            if self.one_step is not None:
                self.one_step.save(output_dir)
        weights.clear()  # accelerate must not write its own copy of the models

    def _load_hook(self, models: list, input_dir: str) -> None:
        from ..weights.checkpoint import load_official_checkpoint

        models.clear()  # loaded here instead
        loaded = load_official_checkpoint(input_dir, merge_lora=False)  # one-step: the LoRA stays an adapter
        for name, module in self.models.named_modules_():
            module.load_state_dict(getattr(loaded, name).state_dict())
        if self.one_step is not None:
            self.one_step.load(input_dir)

    def clip_gradients(self) -> torch.Tensor | None:
        """Clip the ControlNet + UNet gradients to ``max_grad_norm`` together (their norm alone decides the
        scale; the Refine layer's gradients are neither counted nor scaled), as the official ``train.py``."""
        return self.accelerator.clip_grad_norm_(self.clip_params, self.cfg.max_grad_norm)

    def report_skipped(self, skipped: list[tuple[str, str]]) -> None:
        """Log the files a batch had to skip mid-run (damaged since the scan) and append them to data-report.txt,
        once each per process (DataLoader workers cannot share what they already reported; this can).

        Every process appends its own (lines are written with one O_APPEND write each); a process on a node that
        does not see the output folder only logs them.
        """
        new = dict((p, why) for p, why in skipped if p not in self._reported)  # a batch may repeat a file too
        self._reported.update(new)
        for p, why in new.items():  # the one console line per file (the data set itself is quiet)
            self.log(f"warning: skipping {p}: {why}")
        if not new or not self.out.is_dir():
            return
        with open(self.out / DATA_REPORT, "a", encoding="utf-8") as fh:
            fh.write(_report_lines("skipped", [(p, f"mid-run: {why}") for p, why in new.items()]))

    def _generator(self, *parts: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(derive_seed(self.cfg.seed, *parts))

    # ------------------------------------------------------------------ one micro-step

    @torch.no_grad()
    def prepare_batch(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(target GT in [0,1], LQ in [0,1]) on the device; GT-only samples are degraded here, on the device."""
        gt = batch["gt"].to(self.device, torch.float32)
        if "lq" in batch:
            return gt, batch["lq"].to(self.device, torch.float32)
        lq = torch.stack([degrade(g, seed, self.degradation) for g, seed in zip(gt, batch["seed"])])
        if self.cfg.usm_target:
            gt = torch.stack([usm_sharpen(g) for g in gt])
        return gt, lq

    def trace(self, record: dict) -> None:
        if self.cfg.trace_samples:
            path = self.out / "samples" / f"rank-{self.rank}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")

    def weights_checksum(self) -> float:
        """Sum of |w| over the trainable weights (float64): equal on every replica when DDP keeps them in sync."""
        return float(sum(p.detach().double().abs().sum() for p in self.params))

    def micro_step(self, batch: dict, micro: int) -> dict[str, torch.Tensor]:
        self.report_skipped(batch.get("skipped", []))
        self.trace({"step": self.step + 1, "micro_step": micro,
                    "images": [self.dataset.items[i].gt.name for i in batch["index"]]})
        g = self._generator(micro, self.rank)
        gt, lq = self.prepare_batch(batch)
        if self.one_step is not None:
            parts = self.one_step.losses(self, gt, lq, batch["caption"], g)
            self.accelerator.backward(parts["loss"])
            return {k: v.detach() for k, v in parts.items()}
        losses = training_losses(self.pipe, self.module_p, self.noise_scheduler, gt, lq, batch["caption"], g,
                                 self.cfg.max_chunks, self.frozen_dtype, self.accelerator.autocast)
        self.accelerator.backward(losses.total)
        return {"loss": losses.total.detach(), "loss_mse": losses.diffusion.detach(), "loss_rgb": losses.rgb.detach(),
                "loss_fft": losses.fft.detach()}

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> Path:
        acc = self.accelerator
        path = self.out / f"{CHECKPOINT_PREFIX}{self.step}"
        if acc.is_main_process and self.cfg.checkpoints_total_limit:
            old = list_checkpoints(self.out)
            for stale in old[: max(0, len(old) - self.cfg.checkpoints_total_limit + 1)]:
                shutil.rmtree(stale)
        acc.wait_for_everyone()
        acc.save_state(str(path))
        acc.wait_for_everyone()
        if acc.is_main_process:
            state = {"step": self.step, "micro_step": self.step * self.cfg.grad_accum, "world_size": self.world,
                     "batch_size": self.cfg.batch_size, "seed": self.cfg.seed, "base": self.models.base}
            write_text_atomic(path / STATE_FILE, json.dumps(state, indent=2))  # last: marks the checkpoint done
        acc.wait_for_everyone()
        self.log(f"saved {path}")
        return path

    def resume(self, path: Path) -> None:
        state = read_state(path)
        if state["world_size"] * state["batch_size"] != self.world * self.cfg.batch_size or state["seed"] != self.cfg.seed:
            self.log(f"warning: {path} was written with {state['world_size']} process(es) x batch {state['batch_size']}"
                     f" and seed {state['seed']}: the data stream will not continue exactly")
        self.accelerator.load_state(str(path))
        self.step = int(state["step"])
        self.log(f"resumed from {path} at step {self.step}")

    # ------------------------------------------------------------------ validation

    def _validation_inputs(self) -> tuple[torch.Tensor, torch.Tensor | None, float]:
        """(LQ batch, GT batch or None, upscale) for validation; fixed for the whole run."""
        if self.validation_batch is None:
            cfg = self.cfg
            if cfg.validation_images:
                from ..image_io import load_image, resize_image
                from .data import list_images

                files = list_images(Path(cfg.validation_images))[: cfg.validation_count]
                if not files:
                    raise InputError(f"--validation-images {cfg.validation_images}: no images")
                size = max(8, cfg.resolution // cfg.scale)
                lq = torch.cat([resize_image(load_image(f).rgb, (size, size)) for f in files])
                self.validation_batch = {"lq": lq, "gt": None, "upscale": float(cfg.scale)}
            else:
                n = min(cfg.validation_count, len(self.dataset))
                batch = collate([self.dataset[(i, -1 - i)] for i in range(n)])
                self.report_skipped(batch["skipped"])
                gt, lq = self.prepare_batch(batch)
                self.validation_batch = {"lq": lq.cpu(), "gt": gt.cpu(), "upscale": 1.0}
        v = self.validation_batch
        return v["lq"], v["gt"], v["upscale"]

    @torch.no_grad()
    def validate(self) -> Path | None:
        if not self.accelerator.is_main_process:
            return None
        from ..image_io import save_png
        from ..restore.pipeline import RestoreOptions, restore_image

        lq, gt, upscale = self._validation_inputs()
        steps, cfg = (1, 1.0) if self.one_step is not None else (self.cfg.validation_steps, RestoreOptions.cfg)
        options = RestoreOptions(steps=steps, cfg=cfg, seed=self.cfg.seed, tile=None, vae_tile=None)
        self.module.eval()
        try:
            with self.accelerator.autocast():
                out = torch.cat([restore_image(self.pipe, lq[i:i + 1], "", options, upscale=upscale)
                                 for i in range(lq.shape[0])]).cpu()
        finally:
            self.module.train()
        size = tuple(out.shape[-2:])
        rows = [torch.nn.functional.interpolate(lq, size=size, mode="nearest"), out]
        if gt is not None:
            rows.append(gt)
        grid = torch.cat([torch.cat(list(r), dim=-1) for r in rows], dim=-2)  # one row per kind, one column per image
        path = self.out / "validation" / f"step-{self.step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_png(grid[None].clamp(0, 1), path)
        return path

    # ------------------------------------------------------------------ the loop

    def train(self, stop_after: int | None = None) -> TrainResult:
        """Train to ``max_steps`` (or stop after ``stop_after`` more steps, for tests of resuming)."""
        from torch.utils.data import DataLoader
        from tqdm import tqdm

        acc, cfg = self.accelerator, self.cfg
        if self.resume_from is not None:
            self.resume(self.resume_from)
        if acc.is_main_process:
            (self.out / "train-config.json").write_text(cfg.to_json())
            metrics_file = self.out / "metrics.jsonl"
            _truncate_metrics(metrics_file, self.step)
        if cfg.report_to not in ("", "none"):
            acc.init_trackers("sspir", config={k: v for k, v in json.loads(cfg.to_json()).items()
                                               if isinstance(v, (int, float, str, bool))})
        sampler = PositionSampler(len(self.dataset), cfg.batch_size, cfg.seed, self.rank, self.world,
                                  start=self.step * cfg.grad_accum)
        loader = DataLoader(self.dataset, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate,
                            num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0)
        batches = iter(loader)
        end = cfg.max_steps if stop_after is None else min(cfg.max_steps, self.step + stop_after)
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", unit="step",
                   disable=not acc.is_main_process or None)
        losses: list[float] = []
        last: Path | None = None
        grad_norm = None
        t0 = time.perf_counter()
        while self.step < end:
            parts: dict[str, torch.Tensor] = {}
            for k in range(cfg.grad_accum):
                batch = next(batches)
                with acc.accumulate(self.module_p):
                    out = self.micro_step(batch, self.step * cfg.grad_accum + k)
                    if acc.sync_gradients:
                        grad_norm = (self.one_step.clip(acc, cfg.max_grad_norm) if self.one_step is not None
                                     else self.clip_gradients())
                    self.optimizer.step()
                    self.lr_scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                for name, v in out.items():
                    parts[name] = parts.get(name, 0) + v / cfg.grad_accum
            self.step += 1
            means = {k: float(acc.reduce(v.detach().clone(), reduction="mean")) for k, v in parts.items()}
            dt = time.perf_counter() - t0
            record = {"step": self.step, **means, "lr": self.lr_scheduler.get_last_lr()[0],
                      "grad_norm": float(grad_norm) if grad_norm is not None else None, "step_time_s": round(dt, 4),
                      "samples_per_s": round(cfg.batch_size * cfg.grad_accum * self.world / dt, 3)}
            losses.append(means["loss"])
            if not math.isfinite(means["loss"]):
                raise FloatingPointError(f"loss is {means['loss']} at step {self.step}; lower --lr or use bf16")
            if acc.is_main_process:
                with open(metrics_file, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(record) + "\n")
                bar.update(1)
                bar.set_postfix(loss=f"{means['loss']:.4f}")
                if self.step % cfg.log_every == 0:
                    bar.write(f"step {self.step}: loss {means['loss']:.4f} (mse {means['loss_mse']:.4f} rgb "
                              f"{means['loss_rgb']:.4f} fft {means['loss_fft']:.4f})", file=sys.stderr)
            if cfg.report_to not in ("", "none"):
                acc.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=self.step)
            if self.step % cfg.validate_every == 0:
                self.validate()
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.max_steps:
                last = self.save_checkpoint()
            t0 = time.perf_counter()  # step_time_s leaves out validation and saving
        bar.close()
        self.trace({"final_step": self.step, "weights_checksum": self.weights_checksum(), "world_size": self.world,
                    "backend": str(acc.state.backend)})
        if cfg.report_to not in ("", "none"):
            acc.end_training()
        return TrainResult(self.step, last, losses)


def _report_lines(kind: str, entries: list[tuple[Path | str, str]]) -> str:
    """data-report.txt lines: ``kind<TAB>path<TAB>reason``, one per file (reasons kept on one line)."""
    return "".join(f"{kind}\t{p}\t{' '.join(str(why).split())}\n" for p, why in entries)


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop lines past the resumed step so metrics.jsonl holds each step once."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def train(cfg: TrainConfig, log: Callable[[str], None] | None = None) -> TrainResult:
    return Trainer(cfg, log).train()

