"""SSP-IR restoration: LQ image(s) + caption(s) -> restored image(s).

Everything that does not depend on the timestep (text embedding, CLIP image embedding, Processor
features) is computed once per image; the denoising loop only runs ControlNet + UNet, tile by tile
when the image is larger than one tile (Gaussian-blended latent tiles keep memory bounded: pixel
attention is quadratic in tile area).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from ..errors import InputError, SSPIRError
from ..models.build import SSPIRModels, move_module
from ..models.fast_paths import FastPaths, fast_paths
from ..models.one_step import ONE_STEP
from .color_fix import apply_color_fix
from .compile_models import is_compiled
from .one_step import OneStepScheduler
from .options import MAX_STEPS, START_CHOICES, RestoreOptions, StepCallback  # noqa: F401 (re-exported)
from .output_stream import decode_to_integers
from .prompt import encode_prompt_pair, group_by_chunks, warn_cut_prompts
from .schedulers import make_scheduler, noise_to, step_accepts_generator
from .tiling import blend_tiles, tiled_vae_decode, tiled_vae_encode
from .work import Run, cancel_points, plan_restore, vae_decode_tile, vae_encode_overlap

# The paper starts from the LQ latent noised to the last training timestep.
START_TIMESTEP = 999
# Cheap latent -> RGB preview for SD1.x/2.x latents (a fixed linear map; good enough for a progress image).
_PREVIEW = torch.tensor(
    [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]]
)


class RestoreCancelled(SSPIRError):
    """The step callback asked to stop."""


class OutOfMemory(SSPIRError):
    """Raised instead of a bare CUDA OOM, with what to change."""


class Priors(NamedTuple):
    """Priors computed outside :meth:`RestorePipeline.restore` for one padded LQ batch; None = compute there.

    ``image_emb``: Refine-layer output [B, tokens, 512] of the LQ's real part (see ``box``);
    ``features``: Processor features [B, C, H/8, W/8] of the padded LQ.
    """

    image_emb: torch.Tensor | None = None
    features: torch.Tensor | None = None

    def check(
        self, lq: torch.Tensor, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Both on ``device``/``dtype``, after checking they belong to ``lq`` (batch and latent size)."""
        b, h, w = lq.shape[0], lq.shape[-2] // 8, lq.shape[-1] // 8
        if self.image_emb is not None and self.image_emb.shape[0] != b:
            raise InputError(f"image embedding has batch {self.image_emb.shape[0]}, the LQ batch is {b}")
        if self.features is not None and (self.features.shape[0] != b or tuple(self.features.shape[-2:]) != (h, w)):
            raise InputError(
                f"structure features {tuple(self.features.shape)} do not fit an LQ of batch {b} and latent size {h}x{w}"
            )
        return tuple(None if t is None else t.to(device, dtype) for t in self)  # type: ignore[return-value]

    def select(self, index: list[int]) -> Priors:
        """The priors of some images of the batch (in that order)."""
        return Priors(*(None if t is None else t[index] for t in self))


@dataclass
class RestorePipeline:
    """The SSP-IR networks plus the frozen SD and CLIP parts they run with."""

    models: SSPIRModels
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: Any
    clip_vision: nn.Module
    scheduler_config: dict[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    offload: bool = False  # keep models on the CPU and move each stage to the device only while it runs
    untrained: bool = False  # set by the tiny-random preset so callers can say so
    # Modules go to the device when a stage first runs them and stay there, instead of all six at once here: a
    # pipeline built for one stage (a ComfyUI prior node) moves only that stage's modules.
    lazy: bool = False
    # One run at a time: runs share the modules (and, with offload, move them), so a second thread waits. Pipelines
    # built over shared cached modules pass the lock of that cache, so one lock guards them all.
    lock: Any = field(default_factory=threading.RLock, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)
        for m in self._all_modules():
            m.eval().requires_grad_(False)
        if self.lazy and not self.offload:
            return
        home = torch.device("cpu") if self.offload else self.device
        for m in self._all_modules():
            move_module(m, home, self.dtype)

    def _all_modules(self) -> list[nn.Module]:
        return [
            self.models.unet,
            self.models.controlnet,
            self.models.refine,
            self.vae,
            self.text_encoder,
            self.clip_vision,
        ]

    @contextlib.contextmanager
    def _stage(self, *modules: nn.Module, run: Run | None = None) -> Iterator[None]:
        """Modules on the device for one stage (one run at a time); with ``run``, a cancel point in each block."""
        with self.lock, self._placed(*modules), cancel_points(run, *modules):
            yield

    @contextlib.contextmanager
    def _placed(self, *modules: nn.Module) -> Iterator[None]:
        if self.lazy and not self.offload:
            for m in modules:  # as __post_init__ would have placed it: to the device, in the pipeline's dtype
                move_module(m, self.device, self.dtype)
        if self.offload:
            for m in modules:
                move_module(m, self.device, None)
        try:
            yield
        finally:
            if self.offload:
                for m in modules:
                    move_module(m, torch.device("cpu"), None)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()

    # ------------------------------------------------------------------ priors (once per image)

    @torch.no_grad()
    def encode_text(self, captions: Sequence[str], negative: str, max_chunks: int) -> tuple[torch.Tensor, torch.Tensor]:
        with self._stage(self.text_encoder):
            pos, neg = encode_prompt_pair(
                self.text_encoder, self.tokenizer, list(captions), negative, max_chunks=max_chunks, device=self.device
            )
        return pos.to(self.dtype), neg.to(self.dtype)

    @torch.no_grad()
    def encode_image(self, lq: torch.Tensor, run: Run | None = None) -> torch.Tensor:
        """CLIP patch tokens of the (upscaled) LQ through the Refine layer: the implicit semantic prior."""
        with self._stage(self.clip_vision, self.models.refine, run=run):
            _unit(run, "clip")
            tokens = self.clip_vision(lq.to(self.device))
            return self.models.refine(tokens.to(self.dtype))

    @torch.no_grad()
    def structure_prior(
        self, lq: torch.Tensor, tile: int | None = None, return_rgbs: bool = True, run: Run | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Processor features (for the ControlNet) and its RGB maps (to show the structure prior).

        ``tile`` in pixels (multiple of 8): an exact tiled pass that bounds memory on large images.
        """
        cn = self.models.controlnet
        with self._stage(cn, run=run):
            on_tile = _on_tile(run, "processor")
            if tile is not None:  # each tile is moved and cast alone: no image-sized copy in the model dtype
                return cn.encode_condition(lq, return_rgbs, tile=tile, cast=(self.device, self.dtype), on_tile=on_tile)
            return cn.encode_condition(lq.to(self.device, self.dtype), return_rgbs, on_tile=on_tile)

    # ------------------------------------------------------------------ VAE

    @torch.no_grad()
    def vae_encode(
        self, lq: torch.Tensor, generators: list[torch.Generator], vae_tile: int | None, run: Run | None = None
    ) -> torch.Tensor:
        with self._stage(self.vae, run=run):

            def moments(img: torch.Tensor) -> torch.Tensor:  # cast, then [0,1] -> [-1,1], per tile:
                img = img.to(self.device, self.dtype)  # no image-sized copy
                return self.vae.encode(2 * img - 1).latent_dist.parameters

            if vae_tile is None:
                _unit(run, "vae encode")
                params = moments(lq)
            else:
                params = tiled_vae_encode(
                    moments,
                    lq,
                    tile_px=vae_tile,
                    overlap_px=vae_encode_overlap(vae_tile),
                    on_tile=_on_tile(run, "vae encode"),
                )
        latents = [
            DiagonalGaussianDistribution(params[i : i + 1]).sample(generator=g) for i, g in enumerate(generators)
        ]
        return torch.cat(latents) * self.vae.config.scaling_factor

    @torch.no_grad()
    def vae_decode(self, latents: torch.Tensor, vae_tile: int | None, run: Run | None = None) -> torch.Tensor:
        z = (latents / self.vae.config.scaling_factor).to(self.dtype)
        with self._stage(self.vae, run=run):

            def decode(t: torch.Tensor) -> torch.Tensor:
                return self.vae.decode(t).sample

            tile, overlap = vae_decode_tile(vae_tile)
            if tile is None:
                _unit(run, "vae decode")
                out = decode(z)
            else:
                out = tiled_vae_decode(
                    decode, z, tile_latent=tile, overlap_latent=overlap, on_tile=_on_tile(run, "vae decode")
                )
        return out.float().add_(1).div_(2).clamp_(0, 1)

    @torch.no_grad()
    def decode_to_integers(
        self,
        latents: torch.Tensor,
        source: torch.Tensor,
        box: tuple[int, int, int, int],
        color_fix: str,
        bits: int,
        vae_tile: int | None,
        run: Run | None = None,
    ) -> torch.Tensor:
        """:meth:`vae_decode`, crop to ``box``, colour fix against ``source`` and 8/16-bit quantising, streamed.

        Never holds a float image of the whole output (see :mod:`sspir_core.restore.output_stream`); returns
        ``uint8``/``uint16`` ``[B,3,h,w]``.
        """
        z = (latents / self.vae.config.scaling_factor).to(self.dtype)
        tile, overlap = vae_decode_tile(vae_tile)
        with self._stage(self.vae, run=run):
            return decode_to_integers(
                lambda t: self.vae.decode(t).sample,
                z,
                source.to(self.device),
                box,
                color_fix,
                bits,
                tile,
                overlap,
                on_tile=_on_tile(run, "vae decode"),
            )

    # ------------------------------------------------------------------ denoising

    def make_scheduler(self, options: RestoreOptions) -> Any:
        scheduler = make_scheduler(options.scheduler, self.scheduler_config)
        scheduler.set_timesteps(options.steps, device=self.device)
        return scheduler

    @torch.no_grad()
    def denoise(
        self,
        latents: torch.Tensor,
        text: torch.Tensor,
        text_negative: torch.Tensor,
        image_emb: torch.Tensor,
        features: torch.Tensor,
        options: RestoreOptions,
        generators: list[torch.Generator],
        callback: StepCallback | None = None,
        scheduler: Any | None = None,
        paths: FastPaths | None = None,
        run: Run | None = None,
    ) -> torch.Tensor:
        """The sampling loop; ``latents`` are the starting point (already noised, with ``scheduler`` if given).

        ``paths``: the inference rewrites to use (default ``FastPaths()``: same numbers within fp rounding,
        less work); ``FastPaths.none()`` runs the plain path, for comparison.
        """
        if scheduler is None:
            scheduler = self.make_scheduler(options)
        guided = options.cfg != 1.0
        if guided:  # CFG on text only: image embedding and structure prior are the same in both halves
            text_in = torch.cat([text_negative, text])
            image_in = torch.cat([image_emb, image_emb])
        else:
            text_in, image_in = text, image_emb
        extra = {"generator": generators} if step_accepts_generator(scheduler) else {}
        cn, unet = self.models.controlnet, self.models.unet
        paths = FastPaths() if paths is None else paths
        if paths.context_kv and (is_compiled(cn) or is_compiled(unet)):
            paths = replace(paths, context_kv=False)  # its per-tensor bookkeeping would break the compiled graph
        share = guided and paths.shared_cfg_prefix  # both halves equal up to the first text attention

        def predict(z: torch.Tensor, box: tuple[int, int, int, int], t: torch.Tensor) -> torch.Tensor:
            y0, y1, x0, x1 = box
            feats = features[..., y0:y1, x0:x1]  # doubled per tile, never the whole image twice
            z_in, feats = (torch.cat([z, z]), torch.cat([feats, feats])) if guided and not share else (z, feats)
            res = cn(
                z_in,
                t,
                text_in,
                processor_features=feats,
                conditioning_scale=options.conditioning_scale,
                image_encoder_hidden_states=image_in,
                return_rgbs=False,
            )
            eps = unet(
                z_in,
                t,
                text_in,
                image_encoder_hidden_states=image_in,
                down_block_additional_residuals=res.down_residuals,
                mid_block_additional_residual=res.mid_residual,
            ).sample
            if guided:
                uncond, cond = eps.chunk(2)
                eps = uncond + options.cfg * (cond - uncond)
            return eps

        total = len(scheduler.timesteps)
        on_tile = _on_tile(run, "denoise")
        with self._stage(cn, unet, run=run), fast_paths(cn, unet, paths=paths):
            for i, t in enumerate(scheduler.timesteps):
                z_in = scheduler.scale_model_input(latents, t).to(self.dtype)
                h, w = z_in.shape[-2:]
                if options.tile is None or (h <= options.tile and w <= options.tile):
                    _unit(run, "denoise")
                    eps = predict(z_in, (0, h, 0, w), t)
                else:
                    eps = blend_tiles(
                        lambda z, box, t=t: predict(z, box, t),
                        z_in,
                        options.tile,
                        options.tile_overlap,
                        on_tile=on_tile,
                    )
                latents = scheduler.step(eps.float(), t, latents.float(), **extra).prev_sample
                if callback is not None and callback(i + 1, total, latents) is False:
                    raise RestoreCancelled(f"stopped at step {i + 1}/{total}")
        return latents

    # ------------------------------------------------------------------ the whole job

    def restore(
        self,
        lq: torch.Tensor,
        captions: str | Sequence[str] = "",
        options: RestoreOptions | None = None,
        callback: StepCallback | None = None,
        box: tuple[int, int, int, int] | None = None,
        priors: Priors | None = None,
        output_bits: int | None = None,
        run: Run | None = None,
    ) -> torch.Tensor:
        """Restore ``lq`` ([B,3,H,W] in [0,1], already at the output size, H and W multiples of 8).

        ``captions``: one string for all images or one per image. ``box`` ``(y0, y1, x0, x1)``: the part
        of ``lq`` that is the real image (the rest is padding); CLIP sees and the output keeps only that
        part, and the colour fix is computed on it. ``priors``: image embedding and/or Processor features
        computed elsewhere (e.g. by separate ComfyUI nodes) for exactly this ``lq``; missing ones are
        computed here. Returns [B,3,h,w] in [0,1].
        Each image gets what it gets alone with the same seed: captions that need different chunk
        counts run as separate groups, and ``callback`` then counts the steps of all groups in turn.
        Use :func:`restore_image` to upscale, pad and crop arbitrary inputs. ``output_bits`` 8 or 16: return
        ``uint8``/``uint16`` from a streamed decode -> colour fix -> quantise tail that never holds a float
        image of the whole output (what a file writer needs; memory stays flat on large images).
        ``run`` (:class:`~sspir_core.restore.work.Run`): the work is counted and logged before it starts, then
        every tile reports progress and every model block is a cancel point (its ``check`` raises to stop).
        """
        options = options or RestoreOptions()
        options.validate()  # again: a field may have been changed since it was made
        _check_lq(lq)
        b = lq.shape[0]
        caps = [captions] * b if isinstance(captions, str) else list(captions)
        if len(caps) == 1 and b > 1:
            caps = caps * b
        if len(caps) != b:
            raise InputError(f"got {len(caps)} captions for {b} images: give one caption, or one per image")
        box = box or (0, lq.shape[-2], 0, lq.shape[-1])
        warn_cut_prompts(self.tokenizer, caps, options.max_chunks)
        # Captions of different chunk counts run as separate groups: padding one caption to another's length
        # (and its negative with it) would change its image, so each image gets what it gets alone.
        groups = group_by_chunks(self.tokenizer, caps, options.max_chunks)
        priors = priors or Priors()
        if run is not None:
            run.begin(
                plan_restore(
                    tuple(lq.shape[-2:]),
                    b,
                    options.steps,
                    options.cfg != 1.0,
                    options.tile,
                    options.tile_overlap,
                    options.vae_tile,
                    options.start,
                    len(groups),
                    clip=priors.image_emb is None,
                    processor=priors.features is None,
                    output=(box[3] - box[2], box[1] - box[0]),
                )
            )
        try:
            with self.lock:  # one run at a time (a server may call from several threads)
                if len(groups) == 1:
                    return self._restore(lq, caps, options, callback, box, priors, output_bits, run)
                out: list[torch.Tensor | None] = [None] * b
                for g, idx in enumerate(groups):
                    part = self._restore(
                        lq[idx],
                        [caps[i] for i in idx],
                        options,
                        _group_progress(callback, g, len(groups)),
                        box,
                        priors.select(idx),
                        output_bits,
                        run,
                    )
                    for j, i in enumerate(idx):
                        out[i] = part[j : j + 1]
                return torch.cat(out)  # type: ignore[arg-type]
        except torch.OutOfMemoryError as e:
            raise OutOfMemory(
                f"out of memory on {self.device} ({e}). Try a smaller tile (now {options.tile} latent px), "
                f"dtype fp16/bf16 (now {self.dtype}), offload between stages, or a smaller upscale."
            ) from e

    def _restore(
        self,
        lq: torch.Tensor,
        captions: list[str],
        options: RestoreOptions,
        callback: StepCallback | None,
        box: tuple[int, int, int, int],
        priors: Priors,
        output_bits: int | None = None,
        run: Run | None = None,
    ) -> torch.Tensor:
        y0, y1, x0, x1 = box
        real = lq[..., y0:y1, x0:x1]
        generators = seeded_generators(self.device, options.seed, lq.shape[0])
        text, text_negative = self.encode_text(captions, options.negative_prompt, options.max_chunks)
        image_emb, features = priors.check(lq, self.device, self.dtype)
        if image_emb is None:
            image_emb = self.encode_image(real, run)
        if features is None:  # features only: the RGB maps are not needed here
            features, _ = self.structure_prior(
                lq, tile=None if options.tile is None else 8 * options.tile, return_rgbs=False, run=run
            )
        shape = (lq.shape[0], self.models.unet.config.in_channels, lq.shape[-2] // 8, lq.shape[-1] // 8)
        if self.models.mode == ONE_STEP and options.steps == 1:  # one-step model: the LQ latent at t = 999 -> x0
            noise, scheduler = None, OneStepScheduler(self.scheduler_config, self.device)
            latents = self.vae_encode(lq, generators, options.vae_tile, run).float()  # no noise drawn or added
        else:
            noise = randn_tensor(shape, generator=generators, device=self.device, dtype=torch.float32)
            scheduler = self.make_scheduler(options)
            if options.start == "lq":
                clean = self.vae_encode(lq, generators, options.vae_tile, run).float()
                latents = noise_to(scheduler, clean, noise, START_TIMESTEP)
            else:
                latents = noise * scheduler.init_noise_sigma
        latents = self.denoise(
            latents, text, text_negative, image_emb, features, options, generators, callback, scheduler, run=run
        )
        del features, image_emb, noise  # not needed by the decode: free them before its peak
        if output_bits is not None:
            return self.decode_to_integers(latents, real, box, options.color_fix, output_bits, options.vae_tile, run)
        out = self.vae_decode(latents, options.vae_tile, run)[..., y0:y1, x0:x1]
        return apply_color_fix(out, real.to(out.device, out.dtype), options.color_fix)


def seeded_generators(device: torch.device, seed: int, count: int) -> list[torch.Generator]:
    """One generator per image, on the pipeline's device, all seeded alike (each image as if alone).

    A function of its own so that the CUDA dry run (:mod:`sspir_core.bench.fake_cuda`), where no CUDA
    generator can exist, can put CPU ones in its place: diffusers' ``randn_tensor`` draws on a CPU generator
    and moves the noise to the device, so the rest of the run is checked unchanged.
    """
    return [torch.Generator(device=device).manual_seed(seed) for _ in range(count)]


def _unit(run: Run | None, stage: str) -> None:
    if run is not None:
        run.unit(stage)


def _on_tile(run: Run | None, stage: str) -> Callable[[], None] | None:
    """The tiling loops' ``on_tile`` for one stage of ``run``."""
    return None if run is None else (lambda: run.unit(stage))


def _group_progress(callback: StepCallback | None, group: int, groups: int) -> StepCallback | None:
    """Report a group's steps as part of the whole batch's progress (steps of all groups, in order)."""
    if callback is None:
        return None
    return lambda i, n, z: callback(group * n + i, groups * n, z)


def _check_lq(lq: torch.Tensor) -> None:
    if not isinstance(lq, torch.Tensor) or lq.ndim != 4 or lq.shape[1] != 3:
        raise InputError(f"expected LQ images [B,3,H,W] in [0,1], got {getattr(lq, 'shape', type(lq))}")
    if lq.shape[-1] % 8 or lq.shape[-2] % 8:
        raise InputError(f"LQ height and width must be multiples of 8, got {tuple(lq.shape[-2:])}; use restore_image")


def latent_preview(latents: torch.Tensor, max_size: int = 256) -> torch.Tensor:
    """A cheap RGB preview [B,3,h,w] in [0,1] of SD latents (a fixed linear map; no VAE)."""
    x = latents[:, :4].float()
    rgb = torch.einsum("bchw,cr->brhw", x, _PREVIEW.to(x.device))
    rgb = ((rgb + 1) / 2).clamp(0, 1)
    scale = max(1, max(rgb.shape[-2:]) // max_size)
    return rgb[..., ::scale, ::scale]


def restore_image(
    pipe: RestorePipeline,
    image: torch.Tensor,
    captions: str | Sequence[str] = "",
    options: RestoreOptions | None = None,
    upscale: float = 4.0,
    target_size: tuple[int, int] | None = None,
    callback: StepCallback | None = None,
    priors: Priors | None = None,
    output_bits: int | None = None,
    run: Run | None = None,
) -> torch.Tensor:
    """Upscale ``image`` ([B,3,H,W] in [0,1], any size), restore it, and crop back to the exact output size.

    ``output_bits`` 8/16: integer output from the streamed tail; ``run``: progress and cancel points (see
    :meth:`RestorePipeline.restore`).
    """
    from ..image_io import prepare_lq

    prepared = prepare_lq(image, upscale=upscale, target_size=target_size)
    return pipe.restore(
        prepared.image, captions, options, callback, box=prepared.box, priors=priors, output_bits=output_bits, run=run
    )
