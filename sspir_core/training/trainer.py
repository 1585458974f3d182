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
continues exactly as if it had never stopped.

Crash safety (a kill or a full disk at any moment of a save): a checkpoint is complete when its
``trainer_state.json`` exists; it is written last, after every other file is fsynced, and stale checkpoints
(``--checkpoints-total-limit``) are deleted only after it, so the last complete checkpoint always survives.
Resuming checks every file it will read first (:func:`read_state`); ``--resume latest`` steps back past damaged
ones with a warning naming the file, and stops (never restarts from step 1) when none is usable. A save that does
not fit stops with :class:`~sspir_core.errors.NoSpaceError` and removes its partial folder. Rows of
``metrics.jsonl`` past the resumed step are moved aside, not dropped. ``SSPIR_FAULT`` (see :func:`_fault`) lets
tests kill a save at each of its phases.

Longer than the pack's other modules on purpose: set-up, the accelerate loop, saving/resuming and validation
all act on one :class:`Trainer` state (accelerator, models, optimizer, data position), and exact resume depends
on their order; the parts that stand alone live beside it (:mod:`.step`, :mod:`.data`, :mod:`.config`, and the
one-step mode's :mod:`.one_step`, which the trainer calls at its few dispatch points).
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from ..devices import torch_dtype
from ..errors import InputError, NoSpaceError, SSPIRError
from ..files import fsync_dir, fsync_tree, write_text_atomic
from ..weights.weights_file import DAMAGED_ADVICE, check_torch_archive, check_weights_file
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
WEIGHT_FILES = (
    "unet/diffusion_pytorch_model.safetensors",
    "controlnet/diffusion_pytorch_model.safetensors",
    "refine/refine.pt",
    COMPACT_NAME,
)
ACCELERATE_FILES = ("optimizer.bin", "scheduler.bin")  # accelerate's save_state; random_states_R.pkl per process
TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".pkl")  # torch.save files in a checkpoint (accelerate's and ours)
FAULT_ENV = "SSPIR_FAULT"
FAULT_POINTS = ("after-weights", "after-optimizer", "before-state", "after-state", "during-delete")


@dataclass
class TrainResult:
    step: int
    last_checkpoint: Path | None
    losses: list[float]


def _numbered(output: Path) -> list[Path]:
    found = [
        p for p in output.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and p.name[len(CHECKPOINT_PREFIX) :].isdigit()
    ]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def list_checkpoints(output: Path) -> list[Path]:
    """Finished checkpoints (their trainer_state.json is written last), oldest first."""
    return [p for p in _numbered(output) if (p / STATE_FILE).is_file()]


def read_state(path: Path) -> dict:
    """The trainer state of a checkpoint after checking it can be resumed; an InputError naming the file if not.

    Every file resume reads is checked before accelerate touches it, because accelerate's own errors name no
    file, and it silently skips random states it cannot load: ``trainer_state.json`` (written last,
    atomically: missing means the save never finished) parses and holds every key; the SSP-IR weights,
    ``optimizer.bin``, ``scheduler.bin`` and ``random_states_R.pkl`` of each process exist and are not empty;
    every ``*.safetensors`` header reads and fits the file; every torch file (``*.bin``, ``*.pt``, ``*.pkl``) is a
    whole zip archive whose pickle is complete (checked structurally, nothing is unpickled).
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
    world = state["world_size"] if isinstance(state["world_size"], int) and state["world_size"] >= 1 else 1
    required = [*WEIGHT_FILES, *ACCELERATE_FILES, *(f"random_states_{r}.pkl" for r in range(world))]
    for rel in required:
        needed = path / rel
        if not needed.is_file() or needed.stat().st_size == 0:
            raise InputError(f"{path} is incomplete: {needed} is {'empty' if needed.is_file() else 'missing'}")
    for found in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        try:
            if found.suffix == ".safetensors":
                check_weights_file(found)
            elif found.suffix in TORCH_SUFFIXES:
                check_torch_archive(found)
        except SSPIRError as e:  # the library's advice to download again does not fit a checkpoint
            why = str(e).replace(DAMAGED_ADVICE, "").strip()
            raise InputError(f"{path} cannot be resumed: {why}") from None
    return state


def resolve_resume(cfg: TrainConfig, log: Callable[[str], None] = print) -> Path | None:
    """The checkpoint to resume from, or None for a fresh start.

    ``latest`` is the newest checkpoint that passes :func:`read_state`; each damaged or unfinished newer one is
    skipped with a warning naming the file. When checkpoint folders exist but none is usable it stops: starting
    at step 1 would quietly throw away the finished steps (``--resume none`` starts over on purpose; no
    ``--resume`` at all does too, with a warning when there are checkpoints). An explicit folder must pass
    :func:`read_state`.
    """
    if not cfg.resume:
        found = _numbered(Path(cfg.output)) if cfg.output else []
        if found:
            log(
                f"warning: {cfg.output} already has checkpoint folders (newest {found[-1].name}) and --resume is not "
                "given: starting at step 1 (give --resume latest to continue; --resume none says this is meant). "
                "Its metrics.jsonl rows are moved aside and its checkpoints are replaced as this run reaches them"
            )
        return None
    if cfg.resume.lower() == "none":
        return None
    if cfg.resume == "latest":
        found = _numbered(Path(cfg.output))
        problems: list[str] = []
        for path in reversed(found):
            try:
                read_state(path)
            except InputError as e:
                log(f"warning: --resume latest: skipping {path}: {e}")
                problems.append(f"  {path.name}: {e}")
                continue
            return path
        if found:
            raise InputError(
                f"--resume latest: none of the {len(found)} checkpoint folder(s) in {cfg.output} can be "
                "resumed:\n" + "\n".join(problems) + "\nRestore or remove the damaged files, give "
                "--resume CHECKPOINT-FOLDER, or start over with --resume none or a new --output folder"
            )
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
            raise InputError(
                f"{paired[0]} is in the paired layout: give it alone as --data (not mixed with GT folders)"
            )
        items = gt_items(roots, Path(cfg.captions) if cfg.captions else None, problems)
    return TrainingSet(
        items, cfg.resolution, cfg.seed, cfg.caption_dropout, cfg.allow_gray, log=_quiet, problems=problems
    )


def _quiet(message: str) -> None:
    """The data set's mid-run log under the trainer (see :func:`build_dataset`)."""


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    kwargs = {
        "lr": cfg.lr,
        "betas": (cfg.adam_beta1, cfg.adam_beta2),
        "weight_decay": cfg.weight_decay,
        "eps": cfg.adam_eps,
    }
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
            print(
                "warning: tensorboard is not installed (pip install tensorboard): not logging to it; metrics.jsonl "
                "has every step",
                file=sys.stderr,
            )
            cfg.report_to = "none"
        if cfg.mixed_precision == "fp16" and (cfg.cpu or not torch.cuda.is_available()):
            print(
                "warning: fp16 mixed precision needs a CUDA GPU; training in fp32 on the CPU (--mixed-precision bf16 "
                "also works on CPUs)",
                file=sys.stderr,
            )
            cfg.mixed_precision = "no"
        trackers = None if cfg.report_to in ("", "none") else cfg.report_to
        self.accelerator = Accelerator(
            gradient_accumulation_steps=cfg.grad_accum,
            mixed_precision=cfg.mixed_precision,
            log_with=trackers,
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
            (self.out / DATA_REPORT).write_text(
                _report_lines("skipped", self.dataset.report.skipped)
                + _report_lines("note", self.dataset.report.notes),
                encoding="utf-8",
            )
        self._reported: set[str] = set()
        fp32 = cfg.mixed_precision == "no" or (self.device.type == "cpu" and cfg.mixed_precision != "bf16")
        self.frozen_dtype = torch.float32 if fp32 else torch_dtype(cfg.mixed_precision)
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
        lr_scheduler = get_scheduler(
            cfg.lr_scheduler,
            optimizer,
            num_warmup_steps=cfg.lr_warmup_steps * self.world,
            num_training_steps=cfg.max_steps * self.world,
        )
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
            _fault("after-weights", self.step)
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
        self.trace(
            {
                "step": self.step + 1,
                "micro_step": micro,
                "images": [self.dataset.items[i].gt.name for i in batch["index"]],
            }
        )
        g = self._generator(micro, self.rank)
        gt, lq = self.prepare_batch(batch)
        if self.one_step is not None:
            parts = self.one_step.losses(self, gt, lq, batch["caption"], g)
            self.accelerator.backward(parts["loss"])
            return {k: v.detach() for k, v in parts.items()}
        losses = training_losses(
            self.pipe,
            self.module_p,
            self.noise_scheduler,
            gt,
            lq,
            batch["caption"],
            g,
            self.cfg.max_chunks,
            self.frozen_dtype,
            self.accelerator.autocast,
        )
        self.accelerator.backward(losses.total)
        return {
            "loss": losses.total.detach(),
            "loss_mse": losses.diffusion.detach(),
            "loss_rgb": losses.rgb.detach(),
            "loss_fft": losses.fft.detach(),
        }

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> Path:
        """Write ``checkpoint-N`` whole, ``trainer_state.json`` last, then delete stale ones (never before).

        A crash at any moment leaves the previous complete checkpoint; a save that does not fit stops with
        :class:`NoSpaceError` (checked before writing, and on the writers' out-of-space errors), its partial
        folder removed.
        """
        acc = self.accelerator
        path = self.out / f"{CHECKPOINT_PREFIX}{self.step}"
        if acc.is_main_process:
            if path.exists():  # unfinished, or from a run that went past the checkpoint resumed from: replaced
                self.log(f"note: replacing {path} (left by an earlier run)")
                _delete_checkpoint(path)
        self._check_space(path)
        acc.wait_for_everyone()
        try:
            with _fault_after_optimizer(self.step):
                acc.save_state(str(path))
            acc.wait_for_everyone()
            _fault("before-state", self.step)
            if acc.is_main_process:
                fsync_tree(path)  # accelerate's files (plain torch.save) are on the disk before the marker
                state = {
                    "step": self.step,
                    "micro_step": self.step * self.cfg.grad_accum,
                    "world_size": self.world,
                    "batch_size": self.cfg.batch_size,
                    "seed": self.cfg.seed,
                    "base": self.models.base,
                }
                write_text_atomic(path / STATE_FILE, json.dumps(state, indent=2))  # last: marks the checkpoint done
        except Exception as e:
            if not _out_of_space(e):
                raise
            failed = _without_tracebacks(e)  # their frames hold the failed writer, whose open file holds space
        else:
            failed = None
        if failed is not None:
            if acc.is_main_process:
                import gc

                gc.collect()
                shutil.rmtree(path, ignore_errors=True)
            raise NoSpaceError(
                self._no_space_message(path, self._size_estimate(path)) + " (the save failed: "
                f"{_first_line(failed)}); its partial folder was removed"
            ) from failed
        _fault("after-state", self.step)
        acc.wait_for_everyone()
        if acc.is_main_process and self.cfg.checkpoints_total_limit:
            self._delete_stale(path)
        acc.wait_for_everyone()
        self.log(f"saved {path}")
        return path

    def _delete_stale(self, new: Path) -> None:
        """Keep ``checkpoints_total_limit`` complete checkpoints up to ``new``; older unfinished folders go too.

        Called only once ``new`` is complete. Checkpoints numbered above ``new`` (from a run that went further
        before this one resumed from an earlier checkpoint) are left alone: each is replaced when reached.
        """
        n = _number(new)
        older = [p for p in _numbered(self.out) if _number(p) < n]
        complete = [p for p in older if (p / STATE_FILE).is_file()]
        keep = set(complete[max(0, len(complete) - (self.cfg.checkpoints_total_limit - 1)) :])
        for stale in older:
            if stale not in keep:
                _delete_checkpoint(stale, fault_step=self.step)

    def _size_estimate(self, path: Path) -> int:
        """Bytes the new checkpoint will take: the newest finished one's size, else the tensors to be written."""
        done = [p for p in list_checkpoints(self.out) if p != path]
        if done:
            return sum(f.stat().st_size for f in done[-1].rglob("*") if f.is_file())
        tensors = [t for _, m in self.models.named_modules_() for t in (*m.parameters(), *m.buffers())]  # official
        tensors += self.params  # the compact file: about the trainable parameters
        opt = getattr(self.optimizer, "optimizer", self.optimizer)
        tensors += [
            t
            for st in getattr(opt, "state", {}).values()
            if isinstance(st, dict)
            for t in st.values()
            if isinstance(t, torch.Tensor)
        ]
        return sum(t.numel() * t.element_size() for t in tensors)

    def _no_space_message(self, path: Path, need: int) -> str:
        free = shutil.disk_usage(self.out).free
        return (
            f"no space left on {_mount_point(self.out)} for {path.name} (needs about {_gb(need)}, {_gb(free)} "
            "free): free some space or write to another --output; the previous checkpoint is kept until a new "
            "one is complete, so --checkpoints-total-limit N needs room for N + 1"
        )

    def _check_space(self, path: Path) -> None:
        """Stop before writing when the main process's disk cannot hold the new checkpoint (all processes stop)."""
        problem = [None]
        if self.accelerator.is_main_process:
            need = self._size_estimate(path)
            if need > shutil.disk_usage(self.out).free:
                problem[0] = self._no_space_message(path, need) + f"; nothing of {path.name} was written"
        if self.world > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(problem, from_process=0)
        if problem[0]:
            raise NoSpaceError(problem[0])

    def resume(self, path: Path) -> None:
        state = read_state(path)
        if (
            state["world_size"] * state["batch_size"] != self.world * self.cfg.batch_size
            or state["seed"] != self.cfg.seed
        ):
            self.log(
                f"warning: {path} was written with {state['world_size']} process(es) x batch {state['batch_size']}"
                f" and seed {state['seed']}: the data stream will not continue exactly"
            )
        try:
            self.accelerator.load_state(str(path))
        except SSPIRError:
            raise
        except Exception as e:  # accelerate/torch errors name no file
            raise InputError(
                f"could not resume from {path}: loading its state failed ({type(e).__name__}: "
                f"{_first_line(e)}); resume from an earlier checkpoint (--resume FOLDER) or start over "
                "with --resume none"
            ) from e
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
                out = torch.cat(
                    [restore_image(self.pipe, lq[i : i + 1], "", options, upscale=upscale) for i in range(lq.shape[0])]
                ).cpu()
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
            aside = set_metrics_aside(metrics_file, self.step)
            if aside is not None:
                self.log(
                    f"note: metrics.jsonl had rows past step {self.step} (from the run before this one); "
                    f"they were moved to {aside}"
                )
        if cfg.report_to not in ("", "none"):
            acc.init_trackers(
                "sspir",
                config={k: v for k, v in json.loads(cfg.to_json()).items() if isinstance(v, (int, float, str, bool))},
            )
        sampler = PositionSampler(
            len(self.dataset), cfg.batch_size, cfg.seed, self.rank, self.world, start=self.step * cfg.grad_accum
        )
        loader = DataLoader(
            self.dataset,
            batch_size=cfg.batch_size,
            sampler=sampler,
            collate_fn=collate,
            num_workers=cfg.num_workers,
            persistent_workers=cfg.num_workers > 0,
        )
        batches = iter(loader)
        end = cfg.max_steps if stop_after is None else min(cfg.max_steps, self.step + stop_after)
        bar = tqdm(
            total=cfg.max_steps, initial=self.step, desc="train", unit="step", disable=not acc.is_main_process or None
        )
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
                        grad_norm = (
                            self.one_step.clip(acc, cfg.max_grad_norm)
                            if self.one_step is not None
                            else self.clip_gradients()
                        )
                    self.optimizer.step()
                    self.lr_scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                for name, v in out.items():
                    parts[name] = parts.get(name, 0) + v / cfg.grad_accum
            self.step += 1
            means = {k: float(acc.reduce(v.detach().clone(), reduction="mean")) for k, v in parts.items()}
            dt = time.perf_counter() - t0
            record = {
                "step": self.step,
                **means,
                "lr": self.lr_scheduler.get_last_lr()[0],
                "grad_norm": float(grad_norm) if grad_norm is not None else None,
                "step_time_s": round(dt, 4),
                "samples_per_s": round(cfg.batch_size * cfg.grad_accum * self.world / dt, 3),
            }
            losses.append(means["loss"])
            if not math.isfinite(means["loss"]):
                raise FloatingPointError(f"loss is {means['loss']} at step {self.step}; lower --lr or use bf16")
            if acc.is_main_process:
                with open(metrics_file, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(record) + "\n")
                bar.update(1)
                bar.set_postfix(loss=f"{means['loss']:.4f}")
                if self.step % cfg.log_every == 0:
                    bar.write(
                        f"step {self.step}: loss {means['loss']:.4f} (mse {means['loss_mse']:.4f} rgb "
                        f"{means['loss_rgb']:.4f} fft {means['loss_fft']:.4f})",
                        file=sys.stderr,
                    )
            if cfg.report_to not in ("", "none"):
                acc.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=self.step)
            if self.step % cfg.validate_every == 0:
                self.validate()
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.max_steps:
                last = self.save_checkpoint()
            t0 = time.perf_counter()  # step_time_s leaves out validation and saving
        bar.close()
        self.trace(
            {
                "final_step": self.step,
                "weights_checksum": self.weights_checksum(),
                "world_size": self.world,
                "backend": str(acc.state.backend),
            }
        )
        if cfg.report_to not in ("", "none"):
            acc.end_training()
        return TrainResult(self.step, last, losses)


def _report_lines(kind: str, entries: list[tuple[Path | str, str]]) -> str:
    """data-report.txt lines: ``kind<TAB>path<TAB>reason``, one per file (reasons kept on one line)."""
    return "".join(f"{kind}\t{p}\t{' '.join(str(why).split())}\n" for p, why in entries)


def set_metrics_aside(path: Path, step: int) -> Path | None:
    """On a (re)start at ``step``, move the rows of ``metrics.jsonl`` past it (and any cut-off line) aside.

    They go to ``metrics.after-step-N.<time>.jsonl`` beside it, written atomically before ``metrics.jsonl`` is
    rewritten (atomically) with the rows up to ``step``: nothing a run logged is lost, and metrics.jsonl holds
    each step once. Returns the file they went to, or None when there were none.
    """
    if not path.is_file():
        return None
    keep: list[str] = []
    later: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row_step = json.loads(line).get("step", 0)
        except (ValueError, AttributeError):  # a line cut by a crash mid-write
            row_step = None
        (keep if isinstance(row_step, int) and row_step <= step else later).append(line)
    if not later:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.stem}.after-step-{step}.{stamp}{path.suffix}")
    k = 1
    while aside.exists():
        k += 1
        aside = path.with_name(f"{path.stem}.after-step-{step}.{stamp}-{k}{path.suffix}")
    write_text_atomic(aside, "".join(line + "\n" for line in later))
    write_text_atomic(path, "".join(line + "\n" for line in keep))
    return aside


def _number(path: Path) -> int:
    return int(path.name[len(CHECKPOINT_PREFIX) :])


def _delete_checkpoint(path: Path, fault_step: int | None = None) -> None:
    """Remove a checkpoint folder, its ``trainer_state.json`` first: a crash midway leaves an unfinished
    folder (skipped by resume, removed by the next save) rather than a complete-looking damaged one."""
    (path / STATE_FILE).unlink(missing_ok=True)
    fsync_dir(path)
    for i, child in enumerate(sorted(path.iterdir())):
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
        if i == 0 and fault_step is not None:
            _fault("during-delete", fault_step)
    path.rmdir()


_NO_SPACE_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}
# torch's zip writer (PytorchStreamWriter) reports a failed write as a RuntimeError; safetensors as its own error
_NO_SPACE_TEXT = ("no space left on device", "unexpected pos", "file write failed", "storagefull", "code: 28")


def _out_of_space(e: BaseException) -> bool:
    """Whether an error (or one it was raised from) is a write that found the disk or quota full."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _NO_SPACE_ERRNOS:
            return True
        if not isinstance(e, OSError) and any(t in str(e).lower() for t in _NO_SPACE_TEXT):
            return True
        e = e.__cause__ or e.__context__
    return False


def _without_tracebacks(e: BaseException) -> BaseException:
    """``e`` and the errors it was raised from, their tracebacks dropped (the messages stay)."""
    seen: set[int] = set()
    err: BaseException | None = e
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        err.__traceback__ = None
        err = err.__cause__ or err.__context__
    return e


def _mount_point(path: Path) -> str:
    """The mount point of the filesystem holding ``path`` (what ``df`` names)."""
    p = path.resolve()
    while not os.path.ismount(p) and p.parent != p:
        p = p.parent
    return str(p)


def _gb(n: int) -> str:
    return f"{n / 1e9:.3g} GB"


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


class InjectedFault(BaseException):
    """Raised by :func:`_fault` in ``raise`` mode: a BaseException, so no ``except Exception`` cleans up."""


def _fault(point: str, step: int) -> None:
    """Test hook: ``SSPIR_FAULT=POINT[@STEP][:raise]`` stops the process at ``POINT`` of the save of step STEP
    (any step if not given), as a crash would: ``os._exit(137)`` (SIGKILL's exit status, no clean-up at all),
    or with ``:raise`` an :class:`InjectedFault` for in-process tests. POINT is one of :data:`FAULT_POINTS`.
    Unset (always, outside tests) it costs one environment lookup per save phase."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    spec, _, mode = spec.partition(":")
    name, _, at = spec.partition("@")
    if name != point or (at and int(at) != step):
        return
    if mode == "raise":
        raise InjectedFault(f"{FAULT_ENV}: {point} at step {step}")
    sys.stderr.flush()
    os._exit(137)


@contextmanager
def _fault_after_optimizer(step: int) -> Iterator[None]:
    """While ``SSPIR_FAULT`` names ``after-optimizer``: stop right after accelerate wrote ``optimizer.bin``
    (its save helper is wrapped for the duration of the save only; otherwise nothing is touched)."""
    if not os.environ.get(FAULT_ENV, "").startswith("after-optimizer"):
        yield
        return
    import accelerate.checkpointing as ckpt

    real = ckpt.save

    def save(obj, f, *args, **kwargs):
        real(obj, f, *args, **kwargs)
        if Path(f).name == "optimizer.bin":
            _fault("after-optimizer", step)

    ckpt.save = save
    try:
        yield
    finally:
        ckpt.save = real


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def train(cfg: TrainConfig, log: Callable[[str], None] | None = None) -> TrainResult:
    return Trainer(cfg, log).train()
