"""CUDA dry runs of each route at full SD1.5 size, on fake tensors (see :mod:`.fake_cuda` for the checks).

Each ``*_dry_run`` builds its models inside the fake mode (on ``cuda:0`` in the given dtype), runs the
route's real code with a :class:`~.fake_cuda.DryRunWatch` labelling the stages, and returns a
:class:`DryRunResult`: the ops checked, the fp32 compute that is intended (and why), and the tally's peak.
Any tensor on the wrong device or in an unintended dtype raises from inside the run, naming the op.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import torch
from torch.utils._pytree import tree_leaves, tree_map

from .fake_cuda import CUDA_BLOCK, DryRunWatch, fake_cuda, retype, stand_in_generator, watched
from .settings import model_configs

DEVICE = "cuda:0"  # with an index: a module built on "cuda" reports cuda:0, and move_module compares the two
COLOR_FIX_FP32 = "colour fix in fp32 by design (color_fix.py: .float() before the blur)"
CONFIGS = ("sd15", "tiny-medium", "tiny")


@dataclass
class DryRunResult:
    """What one dry run checked and measured."""

    name: str
    dtype: str
    device: str
    seconds: float
    ops: int
    compute_ops: dict[str, int]
    intended_fp32: dict[str, int]
    peak_bytes: int
    peak_stage: str
    by_stage: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def lines(self) -> list[str]:
        checked = sum(self.compute_ops.values())
        if "saved_bytes" in self.extra:  # with autograd on, what backward needs is what the graph saves
            memory = f"autograd saves {self.extra['saved_bytes'] / 2**20:.0f} MiB for backward"
        else:
            memory = f"peak {self.peak_bytes / 2**20:.0f} MiB above the weights (in {self.peak_stage})"
        out = [
            f"{self.name} [{self.dtype} on {self.device}]: {self.ops} ops, {checked} matmul/conv/attention "
            f"dtype-checked, every op device-checked, {self.seconds:.1f} s; {memory}"
        ]
        out += [f"  intended fp32: {k} x{v}" for k, v in sorted(self.intended_fp32.items())]
        return out


# ------------------------------------------------------------------------------------------ models


def build_pipeline(config: str, dtype: torch.dtype, device: str | torch.device) -> Any:
    """A restore pipeline built where the current mode puts tensors (fake CUDA, or real CPU to compare).

    Same modules as :func:`~.settings.build_bench_pipeline`; weights are left as initialised (values do not
    matter to shapes, dtypes or memory).
    """
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

    from ..models.build import build_models
    from ..restore.pipeline import RestorePipeline
    from ..weights import ClipVisionEncoder, load_tokenizer, sd_config_dir

    model_args, text_cfg, vae_cfg, vision = model_configs(config)
    with torch.device(device):
        models = build_models(device=device, **model_args)
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_cfg))
        vae = AutoencoderKL.from_config(vae_cfg)
        tower = CLIPVisionModel(CLIPVisionConfig(**vision))
        clip = ClipVisionEncoder(
            tower, "transformers", int(vision["image_size"]), int(vision["patch_size"]), int(vision["hidden_size"])
        )
    modules = (models.unet, models.controlnet, models.refine, text_encoder, vae, clip)
    if torch.device(device).type != "cpu" or _is_fake_mode():
        for m in modules:
            retype(m, dtype)
    tokenizer = load_tokenizer(sd_config_dir("sd15") / "tokenizer")
    return RestorePipeline(models, vae, text_encoder, tokenizer, clip, device=device, dtype=dtype, untrained=True)


def _is_fake_mode() -> bool:
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    return any(isinstance(m, FakeTensorMode) for m in _get_current_dispatch_mode_stack())


def weights_bytes(modules: list[torch.nn.Module]) -> int:
    """Bytes of the modules' parameters and buffers, each storage once (CUDA blocks of 512 bytes)."""
    seen: dict[int, int] = {}
    for m in modules:
        for t in [*m.parameters(), *m.buffers()]:
            seen[t.untyped_storage()._cdata] = -(-t.untyped_storage().nbytes() // CUDA_BLOCK) * CUDA_BLOCK
    return sum(seen.values())


# ------------------------------------------------------------------------------------------ seams


class IntTimestepScheduler:
    """A diffusers scheduler whose ``step`` gets its timestep as a Python int (see ``UNCHECKED``).

    The fake mode cannot run ``previous_timestep``'s ``nonzero()`` lookup; the ints come from a twin
    scheduler built on real CPU tensors with the same settings. Everything else is the real scheduler.
    """

    def __init__(self, scheduler: Any, timesteps: list[int]):
        self._scheduler = scheduler
        self._timesteps = timesteps
        self._i = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._scheduler, name)

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, **kwargs: Any) -> Any:
        i = self._i
        self._i += 1
        t = self._timesteps[i]
        prev = self._timesteps[i + 1] if i + 1 < len(self._timesteps) else -1
        sched = self._scheduler
        sched.previous_timestep = lambda _t: prev  # instance attribute over the method, this call only
        try:
            return sched.step(model_output, t, sample, **kwargs)
        finally:
            del sched.previous_timestep


def on_real_tensors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` run on real CPU tensors: for scalar set-up maths from constants (a schedule's alpha bar), whose
    Python ``float`` a fake tensor cannot give."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    def run(*args: Any, **kwargs: Any) -> Any:
        with unset_fake_temporarily(), torch.device("cpu"):
            return fn(*args, **kwargs)

    return run


def _real_timesteps(pipe: Any, options: Any) -> list[int]:
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    from ..restore.schedulers import make_scheduler

    with unset_fake_temporarily(), torch.device("cpu"):
        twin = make_scheduler(options.scheduler, pipe.scheduler_config)
        twin.set_timesteps(options.steps, device="cpu")
        return [int(t) for t in twin.timesteps]


def fused_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` as a GPU runs it: the fused memory-efficient kernel.

    Without a device to query, SDPA on fake CUDA tensors falls back to its math path, which upcasts fp16/bf16
    to fp32 and materialises the attention matrix (GiBs at a 64x64 latent tile); CUDA picks flash or
    memory-efficient attention there, whose saved outputs are the same size. Bool masks become the additive
    bias SDPA makes of them; the bias must have the query's dtype, as the real kernel requires.
    """
    if query.dim() != 4 or enable_gqa:
        return _SDPA(
            query,
            key,
            value,
            attn_mask=attn_mask,
            dropout_p=dropout_p,
            is_causal=is_causal,
            scale=scale,
            enable_gqa=enable_gqa,
        )
    bias = attn_mask
    if bias is not None and bias.dtype == torch.bool:
        bias = torch.zeros(bias.shape, dtype=query.dtype, device=bias.device).masked_fill_(~bias, float("-inf"))
    if bias is not None:
        bias = bias.expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])
    grad = query.requires_grad or key.requires_grad or value.requires_grad
    return torch.ops.aten._scaled_dot_product_efficient_attention(
        query, key, value, bias, grad, dropout_p, is_causal, scale=scale
    )[0]


_SDPA = torch.nn.functional.scaled_dot_product_attention


@contextlib.contextmanager
def gpu_attention() -> Iterator[None]:
    with mock.patch.object(torch.nn.functional, "scaled_dot_product_attention", fused_attention):
        yield


@contextlib.contextmanager
def pipeline_seams(pipe: Any, watch: DryRunWatch) -> Iterator[None]:
    """Stage labels on the pipeline's steps, CPU generators, int timesteps, the colour fix marked intended."""
    from ..restore import color_fix, one_step, output_stream
    from ..restore import pipeline as P

    orig_make = pipe.make_scheduler

    def make_scheduler(options: Any) -> Any:
        return IntTimestepScheduler(orig_make(options), _real_timesteps(pipe, options))

    def cpu_generators(device: torch.device, seed: int, count: int) -> list[torch.Generator]:
        return [stand_in_generator() for _ in range(count)]

    with contextlib.ExitStack() as stack:
        if pipe.device.type == "cuda":
            stack.enter_context(gpu_attention())
        stack.enter_context(mock.patch.object(one_step, "alpha_bar", on_real_tensors(one_step.alpha_bar)))
        stack.enter_context(mock.patch.object(P, "seeded_generators", cpu_generators))
        stack.enter_context(mock.patch.object(pipe, "make_scheduler", make_scheduler))
        for name in (
            "encode_text",
            "encode_image",
            "structure_prior",
            "vae_encode",
            "denoise",
            "vae_decode",
            "decode_to_integers",
        ):
            stack.enter_context(mock.patch.object(pipe, name, watched(watch, getattr(pipe, name), stage=name)))
        stack.enter_context(
            mock.patch.object(P, "apply_color_fix", watched(watch, P.apply_color_fix, "colour fix", COLOR_FIX_FP32))
        )
        for mod in (color_fix, output_stream):
            stack.enter_context(
                mock.patch.object(mod, "wavelet_lowpass", watched(watch, mod.wavelet_lowpass, intended=COLOR_FIX_FP32))
            )
        yield


def _shape_key(args: Any, kwargs: Any) -> tuple:
    return tuple(
        (tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else None for t in tree_leaves((args, kwargs))
    )


class _Spec:
    def __init__(self, t: torch.Tensor):
        self.shape, self.dtype, self.device = t.shape, t.dtype, t.device

    def make(self) -> torch.Tensor:
        return torch.empty(self.shape, dtype=self.dtype, device=self.device)


def _repeat_outputs(fn: Callable[..., Any], runs: int) -> Callable[..., Any]:
    """``fn``, run for real the first ``runs`` times per input shape; later calls of a seen shape return fresh
    (uninitialised) tensors of the outputs' shapes and dtypes, so their memory is counted as the real ones'."""
    seen: dict[tuple, tuple[int, Any]] = {}

    def run(*args: Any, **kwargs: Any) -> Any:
        key = _shape_key(args, kwargs)
        count, example = seen.get(key, (0, None))
        if count < runs:
            out = fn(*args, **kwargs)  # keep only its shapes: holding the output would add to the peak
            seen[key] = (count + 1, tree_map(lambda t: _Spec(t) if isinstance(t, torch.Tensor) else t, out))
            return out
        return tree_map(lambda t: t.make() if isinstance(t, _Spec) else t, example)

    return run


@contextlib.contextmanager
def repeated_tiles(pipe: Any, runs: int = 1) -> Iterator[None]:
    """Every denoiser tile of one shape costs the memory of the first: run the ControlNet and UNet for real
    ``runs`` times per input shape, then hand out same-shaped outputs (see :func:`_repeat_outputs`).

    For the large tiled runs (2048 px: 25 latent tiles per step), whose op count would take minutes. What lives
    beside a tile (the blend's image-sized sums) is the same at every tile, so the tally's peak is unchanged (a
    test compares it with the full run). The VAE's tiles always run: the streamed decode holds a row of
    decoded tiles beside the next one, so its tiles differ in what they meet.
    """
    with contextlib.ExitStack() as stack:
        for module in (pipe.models.controlnet, pipe.models.unet):
            stack.enter_context(mock.patch.object(module, "forward", _repeat_outputs(module.forward, runs)))
        yield


# ------------------------------------------------------------------------------------------ runs


def restore_dry_run(
    dtype: torch.dtype = torch.float16,
    config: str = "sd15",
    size: tuple[int, int] = (512, 768),
    steps: int = 2,
    cfg: float = 7.5,
    tile: int = 64,
    tile_overlap: int = 16,
    vae_tile: int = 512,
    output_bits: int | None = None,
    batch: int = 1,
    device: str = DEVICE,
    block: int = CUDA_BLOCK,
    one_step: bool = False,
    color_fix: str = "wavelet",
    repeat_tiles: bool = False,
) -> DryRunResult:
    """The whole restore on fake ``device`` tensors: priors, tiled VAE encode, ``steps`` CFG steps over latent
    tiles (512x768 px with tile 64/16 is two), tiled decode, colour fix, output (float, or 8/16-bit streamed).

    ``one_step``: the one-step restore (the LQ latent at t = 999 to x0 in one evaluation, no CFG) instead.
    ``repeat_tiles``: run each model once per tile shape (:func:`repeated_tiles`), for large sizes.
    The peak is above the weights, as ``sspir bench --parts memory`` measures it.
    """
    from ..restore.pipeline import RestoreOptions

    t0 = time.perf_counter()
    with fake_cuda(dtype, device=device.split(":")[0], block=block) as watch:
        with watch.in_stage("build"):
            pipe = build_pipeline(config, dtype, device)
        lq = torch.rand(batch, 3, *size)  # the input is there before the run, as in the measured one
        watch.reset_peak()
        base = watch.tally.live
        if one_step:
            from ..models.one_step import ONE_STEP

            pipe.models.mode, steps, cfg = ONE_STEP, 1, 1.0
        options = RestoreOptions(
            steps=steps, cfg=cfg, tile=tile, tile_overlap=tile_overlap, vae_tile=vae_tile, color_fix=color_fix
        )
        with pipeline_seams(pipe, watch), repeated_tiles(pipe) if repeat_tiles else contextlib.nullcontext():
            out = pipe.restore(lq, "a photo", options, output_bits=output_bits)
        expect = torch.uint8 if output_bits == 8 else torch.uint16 if output_bits == 16 else torch.float32
        if out.dtype != expect or str(out.device) != device or tuple(out.shape) != (batch, 3, *size):
            raise AssertionError(
                f"output {tuple(out.shape)} {out.dtype} on {out.device}; expected "
                f"{(batch, 3, *size)} {expect} on {device}"
            )
        del out, lq
        what = "one-step restore" if one_step else f"restore ({steps} steps, CFG {cfg:g})"
        return _result(
            f"{what} {batch} x {size[0]}x{size[1]} px ({config})",
            watch,
            dtype,
            device,
            t0,
            base,
            weight_bytes=weights_bytes(pipe._all_modules()),
        )


def _result(
    name: str, watch: DryRunWatch, dtype: torch.dtype, device: str, t0: float, base: int, **extra: Any
) -> DryRunResult:
    t = watch.tally
    extra = {"peak_with_scratch_bytes": t.peak_with_scratch - base, **extra}
    return DryRunResult(
        name,
        str(dtype).removeprefix("torch."),
        device,
        time.perf_counter() - t0,
        watch.ops_seen,
        dict(watch.compute_ops),
        dict(watch.intended_ops),
        t.peak - base,
        t.peak_stage,
        {k: v - base for k, v in t.by_stage.items()},
        extra,
    )


# ------------------------------------------------------------------------------------------ validation


def measured_cpu_restore(
    config: str = "tiny-medium",
    size: tuple[int, int] = (256, 256),
    steps: int = 2,
    cfg: float = 7.5,
    tile: int = 16,
    tile_overlap: int = 4,
    vae_tile: int = 128,
    one_step: bool = False,
) -> int:
    """Peak CPU tensor bytes of the same restore on real tensors (``sspir bench --parts memory``'s measure)."""
    from ..models.one_step import ONE_STEP
    from ..restore.pipeline import RestoreOptions
    from .memory import cpu_tensor_peak

    pipe = build_pipeline(config, torch.float32, "cpu")
    if one_step:
        pipe.models.mode, steps, cfg = ONE_STEP, 1, 1.0
    options = RestoreOptions(
        steps=steps, cfg=cfg, tile=tile, tile_overlap=tile_overlap, vae_tile=vae_tile, color_fix="wavelet"
    )
    lq = torch.rand(1, 3, *size)
    with torch.no_grad():
        _, peak = cpu_tensor_peak(lambda: pipe.restore(lq, "a photo", options))
    if peak is None:
        raise RuntimeError("this torch's profiler keeps no allocation totals")
    return peak


# ------------------------------------------------------------------------------------------ training


@contextlib.contextmanager
def cuda_autocast(dtype: torch.dtype) -> Iterator[None]:
    """What ``torch.autocast('cuda', dtype)`` does on a GPU, switched on directly: the context manager turns
    itself off without a CUDA runtime, the autocast dispatch itself works on fake CUDA tensors."""
    prev_enabled, prev_dtype = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    torch.set_autocast_enabled("cuda", True)
    torch.set_autocast_dtype("cuda", dtype)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled("cuda", prev_enabled)
        torch.set_autocast_dtype("cuda", prev_dtype)


class SavedTensors:
    """Bytes autograd keeps for backward: unique storages packed by the saved-tensor hooks, plus the inputs
    that non-reentrant gradient checkpointing keeps in its closures, leaving out the weights (there before)."""

    def __init__(self, exclude: set[int], block: int = CUDA_BLOCK):
        self.exclude, self.block = exclude, block
        self.storages: dict[int, int] = {}
        self._keep: list[torch.Tensor] = []  # hold them: a freed storage's key could be reused
        self.largest_block = 0  # gradient checkpointing: the most one checkpointed block saves when recomputed

    def add(self, t: torch.Tensor) -> None:
        key = t.untyped_storage()._cdata
        if key in self.exclude or key in self.storages:
            return
        self.storages[key] = -(-t.untyped_storage().nbytes() // self.block) * self.block
        self._keep.append(t)

    @property
    def bytes(self) -> int:
        return sum(self.storages.values())

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self.add(t)
        return t

    @contextlib.contextmanager
    def hooks(self) -> Iterator[None]:
        import torch.utils.checkpoint as ckpt

        original = ckpt.checkpoint

        def checkpoint(fn: Any, *args: Any, **kwargs: Any) -> Any:
            for a in args:
                if isinstance(a, torch.Tensor):
                    self.add(a)
            # what backward's recompute of this block saves, measured by running it once more here
            block = SavedTensors(self.exclude, self.block)
            with torch.autograd.graph.saved_tensors_hooks(block._pack, lambda t: t):
                fn(*args)
            self.largest_block = max(self.largest_block, block.bytes)
            return original(fn, *args, **kwargs)

        with (
            torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t),
            mock.patch.object(ckpt, "checkpoint", checkpoint),
        ):
            yield


def training_dry_run(
    dtype: torch.dtype = torch.float16,
    config: str = "sd15",
    size: int = 512,
    batch: int = 1,
    mode: str = "multi-step",
    gradient_checkpointing: bool = False,
    vsd: bool = True,
    device: str = DEVICE,
) -> DryRunResult:
    """One training micro-step's forward and losses on fake ``device`` tensors, as the trainer runs it with
    ``--mixed-precision fp16/bf16``: trainable SSP-IR parts in fp32 under CUDA autocast, frozen VAE/text/CLIP in
    ``dtype``. ``mode="one-step"`` adds the LoRA, and with ``vsd`` the VSD scores and both VSD losses (LPIPS off:
    it needs its weights file; its VGG is frozen and small next to the UNet).

    ``extra["saved_bytes"]``: what autograd keeps for backward (the activation memory), weights excluded.
    """
    from ..restore.schedulers import make_scheduler
    from ..training import one_step as training_one_step
    from ..training.models import TrainModule
    from ..training.step import training_losses

    t0 = time.perf_counter()
    with fake_cuda(dtype, device=device.split(":")[0]) as watch:
        with (
            watch.in_stage("build"),
            gpu_attention(),
            # the one-step trainer holds its own reference to alpha_bar (imported by name): patch it where it is called
            mock.patch.object(training_one_step, "alpha_bar", on_real_tensors(training_one_step.alpha_bar)),
        ):
            pipe = build_pipeline(config, torch.float32, device)
            for m in (pipe.vae, pipe.text_encoder, pipe.clip_vision):
                retype(m, dtype)
            params = pipe.models.set_trainable()
            if gradient_checkpointing:
                pipe.models.unet.enable_gradient_checkpointing()
                pipe.models.controlnet.enable_gradient_checkpointing()
            if mode == "one-step":
                one = _one_step_training(pipe, params, vsd, dtype)
            else:
                module = TrainModule(pipe.models).train()
                scheduler = make_scheduler("ddpm", pipe.scheduler_config)
        weights_of = pipe._all_modules() + ([one.module] if mode == "one-step" else [])
        weights = {t.untyped_storage()._cdata for m in weights_of for t in [*m.parameters(), *m.buffers()]}
        gt, lq = torch.rand(batch, 3, size, size), torch.rand(batch, 3, size, size)
        captions = ["a photo of a house by a lake"] * batch
        watch.reset_peak()
        base = watch.tally.live
        saved = SavedTensors(weights)
        g = stand_in_generator()
        with gpu_attention(), saved.hooks(), watch.in_stage(f"train forward ({mode})"):
            if mode == "one-step":
                with cuda_autocast(dtype):
                    z, text, negative, clip_tokens = one.encode(gt, lq, captions, g)
                    losses = one.module(z, text, negative, clip_tokens, lq, gt, one.frozen, g)
                total = losses["loss"]
            else:
                total = training_losses(
                    pipe,
                    module,
                    scheduler,
                    gt,
                    lq,
                    captions,
                    g,
                    frozen_dtype=dtype,
                    autocast=lambda: cuda_autocast(dtype),
                ).total
        if total.dtype != torch.float32 or total.dim() != 0 or not total.requires_grad:
            raise AssertionError(f"loss {total.dtype} {tuple(total.shape)} requires_grad={total.requires_grad}")
        ckpt = ", grad ckpt" if gradient_checkpointing else ""
        return _result(
            f"train forward+loss {mode}{' + VSD' if mode == 'one-step' and vsd else ''} "
            f"{batch} x {size} px ({config}{ckpt})",
            watch,
            dtype,
            device,
            t0,
            base,
            saved_bytes=saved.bytes,
            largest_saved_bytes=max(saved.storages.values(), default=0),
            recompute_block_bytes=saved.largest_block,
            weight_bytes=weights_bytes(weights_of),
            trainable=sum(p.numel() for p in (one.params if mode == "one-step" else params)),
        )


def _one_step_training(pipe: Any, params: list[torch.nn.Parameter], vsd: bool, dtype: torch.dtype) -> Any:
    """The one-step trainer's additions (LoRA, VSD scores, frozen parts) on ``pipe``, as OneStepTraining makes them."""
    from types import SimpleNamespace

    from ..training.config import TrainConfig
    from ..training.one_step import OneStepTraining

    # the trainer's own defaults (OSEDiff's weights), LPIPS off
    cfg = TrainConfig(
        mode="one-step", lambda_lpips=0.0, lambda_vsd=1.0 if vsd else 0.0, lambda_vsd_lora=1.0 if vsd else 0.0
    )
    trainer = SimpleNamespace(cfg=cfg, pipe=pipe, models=pipe.models, device=pipe.device, frozen_dtype=dtype)
    return OneStepTraining(trainer, params)


# ------------------------------------------------------------------------------------------ native route


def import_comfy(folder: str | None = None) -> Any:
    """ComfyUI's ``comfy`` package in this process (CPU mode: its model management probes CUDA otherwise).

    ``folder``: a ComfyUI tree (default: the harness's, ``COMFYUI_DIR`` or the cached 0.3.75, whose requirements
    setup.sh installs into this environment; 0.33.0 runs in a venv of its own). The tree goes last on
    ``sys.path`` so that this pack's ``nodes`` package is found before ComfyUI's ``nodes.py``.
    """
    import sys

    if "comfy.model_management" not in sys.modules:
        if folder is None:
            from ..host import comfyui_dir

            tree = comfyui_dir()
            if not (tree / "main.py").is_file():
                raise FileNotFoundError(f"no ComfyUI tree in {tree}: run `bash scripts/setup.sh --comfyui`")
            folder = str(tree)
        if folder not in sys.path:
            sys.path.append(folder)
        import comfy.cli_args

        comfy.cli_args.args.cpu = True
    import comfy.model_management
    import comfy.ops
    import comfy.patcher_extension

    return comfy


class _Sigma:
    """``transformer_options['sigmas']`` for the dry run: NativeRun reads the current sigma with ``float()``,
    a value a fake tensor does not have."""

    def __init__(self, value: float):
        self.value = value

    def max(self) -> float:
        return self.value


def native_dry_run(
    dtype: torch.dtype = torch.float16,
    config: str = "sd15",
    size: tuple[int, int] = (512, 768),
    tile: int | None = 64,
    tile_overlap: int = 16,
    device: str = DEVICE,
    comfyui: str | None = None,
) -> DryRunResult:
    """The native route's patched model call on fake ``device`` tensors: ComfyUI's own LDM UNet (its
    ``disable_weight_init`` ops, as ComfyUI loads an SD1.5 checkpoint) with Apply SSP-IR's blocks patched in,
    the DIFFUSION_MODEL wrapper (:class:`nodes.native_patch.NativeRun`) running the SSP-IR ControlNet, the image
    and pixel attention hooks, over latent tiles (512x768 px with tile 64/16: two), cond and uncond rows at once.
    Priors (Refine on CLIP tokens, Processor features) as the Apply node computes them.

    ModelPatcher's loading and offloading is left out (its moves are ``Module.to``, checked by the restore
    runs' ``move_module``); so are ComfyUI's samplers (they run around the model call).
    """
    comfy = import_comfy(comfyui)
    import comfy.ldm.modules.attention as comfy_attention
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    from nodes import native_patch as NP

    from ..native.layout import expected_ldm_config, hook_sites
    from ..native.patch import NativePatch

    t0 = time.perf_counter()
    h, w = size[0] // 8, size[1] // 8
    # ComfyUI picks its attention at import from the device it finds (sub-quadratic on the CPU, whose memory
    # query needs a real device); with CUDA and torch 2 it uses PyTorch's SDPA, as here.
    pytorch = comfy_attention.attention_pytorch
    with (
        fake_cuda(dtype, device=device.split(":")[0]) as watch,
        gpu_attention(),
        mock.patch.object(comfy_attention, "optimized_attention", pytorch),
        mock.patch.object(comfy_attention, "optimized_attention_masked", pytorch),
    ):
        with watch.in_stage("build"):
            model_args, _, _, vision = model_configs(config)
            from ..models.build import build_models

            models = build_models(device=device, **model_args)
            cfg = dict(models.unet.config)
            attentions = {s.key: models.unet.get_submodule(s.key) for s in hook_sites(cfg)}
            patch = NativePatch(models.controlnet, models.refine, attentions, cfg, models.base)
            retype(patch.eval().requires_grad_(False), dtype)
            ldm = expected_ldm_config(cfg)
            layers, levels = ldm["num_res_blocks"][0], len(ldm["channel_mult"])
            level_depth = [ldm["transformer_depth"][i * layers] for i in range(levels)]
            unet = (
                UNetModel(
                    image_size=32,
                    out_channels=4,
                    num_heads=8,
                    use_spatial_transformer=True,
                    legacy=False,
                    transformer_depth_middle=1,
                    dtype=dtype,
                    device=device,
                    # popped from the end: the deepest level's output blocks come last here
                    transformer_depth_output=[level_depth[i] for i in range(levels) for _ in range(layers + 1)],
                    operations=comfy.ops.disable_weight_init,
                    **ldm,
                )
                .eval()
                .requires_grad_(False)
            )
            owner = "dryrun"
            by_block: dict[str, list[Any]] = {}
            for site in patch.sites:
                by_block.setdefault(NP._block_path(site).removeprefix("diffusion_model."), []).append(site)
            for path, sites in by_block.items():
                parent, _, name = path.rpartition(".")
                setattr(unet.get_submodule(parent), name, NP._patched_block(unet.get_submodule(path), sites, owner))
        lq = torch.rand(1, 3, *size)
        clip_tokens = torch.rand(
            1, (vision["image_size"] // vision["patch_size"]) ** 2, vision["hidden_size"], dtype=dtype
        )
        x = torch.randn(2, 4, h, w, dtype=dtype)  # uncond + cond rows, as ComfyUI batches them
        context = torch.randn(2, 77, cfg["cross_attention_dim"], dtype=dtype)
        timesteps = torch.full((2,), 999.0)
        watch.reset_peak()
        base = watch.tally.live
        with torch.no_grad():
            with watch.in_stage("priors"):
                emb = patch.image_embedding(clip_tokens)
                feats = patch.structure(lq, tile=None if tile is None else 8 * tile)
            priors = NP.Priors(emb, feats, size)
            holder = type("Patch", (), {"module": patch, "module_for": lambda self, _device: patch})()
            run = NP.NativeRun(holder, priors, 1.0, (float("inf"), 0.0), owner, tile, tile_overlap)
            options = {
                "cond_or_uncond": [1, 0],
                "sigmas": _Sigma(14.6),
                "patches": {"forward_timestep_embed_patch": [(NP.SSPIRHook, NP.run_hook)]},
            }

            def executor(
                x: torch.Tensor, t: torch.Tensor, c: torch.Tensor, y: Any, control: Any, opts: dict, **kw: Any
            ) -> torch.Tensor:
                return unet._forward(x, t, c, y, control, opts, **kw)

            with watch.in_stage("patched model call"):
                out = run(executor, x, timesteps, context, None, None, options)
        if out.shape != x.shape or out.dtype != dtype or str(out.device) != device:
            raise AssertionError(f"model output {tuple(out.shape)} {out.dtype} on {out.device}")
        del out
        return _result(
            f"native patched model call {size[0]}x{size[1]} px ({config})",
            watch,
            dtype,
            device,
            t0,
            base,
            patch_weight_bytes=sum(p.numel() * p.element_size() for p in patch.parameters()),
        )


# ------------------------------------------------------------------------------------------ VRAM report


CARDS_GIB = (24, 40, 80)
RESERVE_GIB = 1.0
"""Left free on every card: the CUDA context (outside the allocator, ~0.3-0.6 GiB with lazy module loading),
the allocator's segment rounding (2 MiB segments for small blocks) and the fragmentation between reserved and
allocated memory. An allowance from CUDA's documented behaviour, not something the dry run can measure."""
OPTIMIZER_BYTES_PER_PARAM = 12
"""fp32 gradient (4) + AdamW's two fp32 moments (8) per trainable parameter, as the trainer keeps them."""


def largest_batch(fixed: int, per_item: int, capacity_gib: float) -> int:
    """The largest batch with ``fixed + batch * per_item`` bytes under the card less :data:`RESERVE_GIB`."""
    room = (capacity_gib - RESERVE_GIB) * 2**30 - fixed
    if room < per_item:
        return 0
    return int(room // per_item) if per_item > 0 else 10**6


def vram_report(
    dtypes: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16),
    training: bool = True,
    native: bool = True,
    log: Callable[[str], Any] = lambda _m: None,
) -> dict[str, Any]:
    """The dry runs and the VRAM they imply at full SD1.5 size (see the module docs and docs/cuda-dry-run.md).

    Restore: weights + the tally's peak, for one 512 -> 512 px image (batch 1 and 2 give the per-image cost),
    and 512 -> 2048 px (x4, tiled: tile 64/16 latent, VAE tile 512, one step: every step and tile repeats the
    first one's memory). Native: the patch's weights and the patched model call's peak. Training: autograd's
    saved bytes at 512 px, batch 1 and 2 (the slope is the per-sample activation memory), with and without
    gradient checkpointing.
    """
    out: dict[str, Any] = {"restore": [], "native": None, "training": [], "reserve_gib": RESERVE_GIB}
    for dtype in dtypes:
        name = str(dtype).removeprefix("torch.")
        log(f"restore 512 px, batch 1 and 2 ({name})...")
        one = restore_dry_run(dtype, size=(512, 512), output_bits=8, batch=1)
        two = restore_dry_run(dtype, size=(512, 512), output_bits=8, batch=2)
        per = max(0, two.peak_bytes - one.peak_bytes)
        fixed = one.extra["weight_bytes"] + one.peak_bytes - per
        row = {
            "dtype": name,
            "what": "512 -> 512 px (2 steps, CFG 7.5, one tile)",
            "weights": one.extra["weight_bytes"],
            "peak": one.peak_bytes,
            "peak_stage": one.peak_stage,
            "per_image": per,
            "fits": {c: largest_batch(fixed, per, c) for c in CARDS_GIB},
            "seconds": one.seconds + two.seconds,
        }
        out["restore"].append(row)
        if dtype == dtypes[0]:
            log(f"restore 512 -> 2048 px ({name})...")
            big = restore_dry_run(dtype, size=(2048, 2048), steps=1, output_bits=8, repeat_tiles=True)
            out["restore"].append(
                {
                    "dtype": name,
                    "what": "512 -> 2048 px (x4, tiled 64/16, VAE tile 512)",
                    "weights": big.extra["weight_bytes"],
                    "peak": big.peak_bytes,
                    "peak_stage": big.peak_stage,
                    "per_image": big.peak_bytes,
                    "fits": {c: largest_batch(big.extra["weight_bytes"], big.peak_bytes, c) for c in CARDS_GIB},
                    "seconds": big.seconds,
                }
            )
    if native:
        log("native patched model call...")
        nat = native_dry_run(dtypes[0])
        out["native"] = {
            "dtype": str(dtypes[0]).removeprefix("torch."),
            "patch_weights": nat.extra["patch_weight_bytes"],
            "peak": nat.peak_bytes,
            "seconds": nat.seconds,
        }
    if training:
        copies = 0  # autocast's fp16 copies of the fp32 weights: saved without checkpointing, cached with it
        for ckpt in (False, True):
            log(f"training step at 512 px, batch 1 and 2{' (grad ckpt)' if ckpt else ''}...")
            one = training_dry_run(dtypes[0], size=512, batch=1, gradient_checkpointing=ckpt)
            two = training_dry_run(dtypes[0], size=512, batch=2, gradient_checkpointing=ckpt)
            per = max(0, two.extra["saved_bytes"] - one.extra["saved_bytes"])
            shared = one.extra["saved_bytes"] - per  # batch-independent: autocast's fp16 weight copies
            copies = copies or shared
            # With checkpointing the copies are not saved but autocast's cache holds them through the forward.
            shared = max(shared, copies)
            block = two.extra["recompute_block_bytes"] // 2 if ckpt else 0  # per sample
            state = one.extra["weight_bytes"] + OPTIMIZER_BYTES_PER_PARAM * one.extra["trainable"]
            # Backward frees each node's saved tensors as it runs and adds the gradients in flight, one per
            # forward tensor still held at most: no more than what is saved (the x2 of the bound); with
            # checkpointing the recomputed block's saved tensors come on top, once at a time.
            out["training"].append(
                {
                    "dtype": str(dtypes[0]).removeprefix("torch."),
                    "checkpointing": ckpt,
                    "saved_shared": shared,
                    "per_sample": per,
                    "recompute_block_per_sample": block,
                    "state": state,
                    "trainable": one.extra["trainable"],
                    "fits_low": {c: largest_batch(state + shared, per + block, c) for c in CARDS_GIB},
                    "fits_high": {c: largest_batch(state + shared, 2 * (per + block), c) for c in CARDS_GIB},
                    "seconds": one.seconds + two.seconds,
                }
            )
    return out


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def vram_lines(r: dict[str, Any]) -> list[str]:
    cards = "/".join(str(c) for c in CARDS_GIB)
    lines = [
        f"CUDA dry run, SD1.5 full size, fake tensors (estimated VRAM; {r['reserve_gib']:g} GiB left free per "
        f"card for the CUDA context and the allocator)"
    ]
    for row in r["restore"]:
        fits = "/".join(str(v) for v in row["fits"].values())
        lines.append(
            f"  restore {row['what']} [{row['dtype']}]: weights {_gib(row['weights'])} + peak "
            f"{_gib(row['peak'])} (in {row['peak_stage']}) = {_gib(row['weights'] + row['peak'])}; "
            f"per image {_gib(row['per_image'])}; images per batch on {cards} GiB: {fits}"
        )
    if r.get("native"):
        n = r["native"]
        lines.append(
            f"  native patch [{n['dtype']}]: weights {_gib(n['patch_weights'])}; patched model call peak "
            f"{_gib(n['peak'])} above all weights (UNet + patch; 2 latent tiles, cond+uncond)"
        )
    for t in r["training"]:
        lo = "/".join(str(v) for v in t["fits_low"].values())
        hi = "/".join(str(v) for v in t["fits_high"].values())
        ck = "with" if t["checkpointing"] else "without"
        lines.append(
            f"  training 512 px {ck} gradient checkpointing [{t['dtype']} autocast]: activations "
            f"{_gib(t['per_sample'])}/sample + {_gib(t['saved_shared'])} shared (autocast's fp16 weight copies)"
            + (f", recompute {_gib(t['recompute_block_per_sample'])}/sample" if t["checkpointing"] else "")
            + f"; weights + grads + AdamW {_gib(t['state'])}; batch on {cards} GiB: {lo} (saved "
            f"tensors only) down to {hi} (backward's gradients at their bound, as much again)"
        )
    return lines


def bench_cuda_dry_run(settings: Any, pipe: Any = None) -> dict[str, Any]:
    """`sspir bench --parts cuda-dry-run`: always SD1.5 at full size on fake CUDA (``--config`` does not apply)."""
    return vram_report(log=lambda m: print(m, flush=True))


def _register() -> None:
    from .settings import EXTRA_PARTS

    EXTRA_PARTS["cuda-dry-run"] = (bench_cuda_dry_run, vram_lines)


_register()


def main(argv: list[str] | None = None) -> int:
    """``python -m sspir_core.bench.dry_run``: every dry run once (fp16 and bf16), then the VRAM table."""
    import argparse
    import warnings

    p = argparse.ArgumentParser(prog="python -m sspir_core.bench.dry_run", description=__doc__)
    p.add_argument("--checks-only", action="store_true", help="the dry runs without the VRAM table")
    a = p.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*data pointer of FakeTensor.*")
    for dtype in (torch.float16, torch.bfloat16):
        runs = [
            (restore_dry_run, {}),
            (restore_dry_run, {"one_step": True, "output_bits": 8}),
            (native_dry_run, {}),
            (training_dry_run, {"mode": "multi-step"}),
            (training_dry_run, {"mode": "one-step", "vsd": True}),
        ]
        for run, kwargs in runs:
            print("\n".join(run(dtype, **kwargs).lines()), flush=True)
    from .fake_cuda import UNCHECKED

    print("not checked by the dry run:")
    for what, why in UNCHECKED:
        print(f"  {what}: {why}")
    if not a.checks_only:
        print("\n".join(vram_lines(vram_report(log=lambda m: print(m, flush=True)))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
