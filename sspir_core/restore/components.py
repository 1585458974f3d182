"""SSP-IR as separate components (model, CLIP vision, captioner, the two priors, the sampler).

What the ComfyUI nodes pass between each other: small frozen *specs* that name files and settings (loading is
lazy and cached, so editing a graph never reloads weights), and *prior* objects.

The priors depend on the output size: the pipeline computes the CLIP embedding and the Processor features on
the LQ image after it is upscaled (and padded) to the output size. A prior object therefore keeps the LQ
image it was made from and the specs of the models that made it, computes itself for a given output size,
and remembers each size it computed. The sampler asks it for the sampler's own output size, so the component
graph gives exactly what :func:`~sspir_core.restore.pipeline.restore_image` gives with the same settings, and a prior
node whose upscale matches the sampler's computes only once.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..captioners import Captioner, get_captioner
from ..captioners.registry import CAPTIONERS as CAPTIONER_CLASSES
from ..captioners.registry import accepted_options
from ..errors import InputError
from ..image_io import lq_output_size, prepare_lq
from .model_cache import ModelCache, file_signature
from .options import RestoreOptions, StepCallback
from .work import Run, plan_prior, processor_tiles

if TYPE_CHECKING:  # the pipeline (and diffusers) load on the first run, not when ComfyUI lists the nodes
    from .pipeline import RestorePipeline

log = logging.getLogger("sspir")

CACHE_CHOICES = ("on device", "in RAM", "off")
"""What happens to loaded models after a run: stay where they ran (fastest), move to RAM (frees VRAM for
other nodes; moved back next run, no disk read), or be dropped (frees everything; next run reloads)."""

# Cached modules are shared by every pipeline built from them: runs that use them take turns. The pipelines built
# here use this lock as their own (one lock for one concern: who may run or move the shared modules now).
RUN_LOCK = threading.RLock()
MODELS = ModelCache(max_items=2)
CLIP_VISION = ModelCache(max_items=2)
CAPTIONER_CACHE = ModelCache(max_items=2)
MODES = ModelCache(max_items=8)
"""Each SSP-IR file's sampling mode, keyed by the file's identity: its header is read once, again when it changes."""


# ------------------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class ModelSpec:
    """An SSP-IR model to run: base SD weights + SSP-IR weights, and where/how to run them.

    ``device`` and ``dtype`` are torch types; names (``"cuda:0"``, ``"float16"``) are parsed here, once.
    """

    sd: str
    sspir: str
    base: str | None = None
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    offload: bool = False
    cache: str = "in RAM"

    def __post_init__(self) -> None:
        if self.cache not in CACHE_CHOICES:
            raise InputError(f"cache {self.cache!r}: choose one of {', '.join(CACHE_CHOICES)}")
        object.__setattr__(self, "device", _as_device(self.device))
        object.__setattr__(self, "dtype", _as_dtype(self.dtype))

    def key(self) -> tuple[Any, ...]:
        """Cache key: file identities (a replaced file reloads), base and dtype (not device: modules move)."""
        return ("sspir", file_signature(self.sd), file_signature(self.sspir), self.base, self.dtype)


def _as_device(value: torch.device | str) -> torch.device:
    try:
        return torch.device(value)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"device {value!r} is not a torch device (e.g. cpu, cuda:0)") from exc


def _as_dtype(value: torch.dtype | str) -> torch.dtype:
    dtype = value if isinstance(value, torch.dtype) else getattr(torch, str(value).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InputError(f"dtype {value!r} is not a torch floating dtype (e.g. float32, float16, bfloat16)")
    return dtype


def checkpoint_mode(model: ModelSpec) -> str:
    """'one-step' or 'multi-step' for the model's SSP-IR file, from its header: read once per file identity
    (path, size, mtime), so every run after the first costs a ``stat`` and a replaced file is read again."""
    from ..weights.one_step import read_mode

    return MODES.get(("mode", file_signature(model.sspir)), lambda: read_mode(model.sspir))


@dataclass(frozen=True)
class ClipVisionSpec:
    path: str

    def key(self) -> tuple[Any, ...]:
        return ("clip_vision", file_signature(self.path))


@dataclass(frozen=True)
class CaptionerSpec:
    """A captioner backend and its settings; options a backend does not take are left out when it is built."""

    backend: str
    model_dir: str | None = None
    url: str | None = None
    model_name: str | None = None
    prompt: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 0
    max_new_tokens: int | None = None
    trust_remote_code: bool = False
    keep_loaded: bool = False
    text: str = ""

    def options(self) -> dict[str, Any]:
        cls = CAPTIONER_CLASSES.get(self.backend)
        if cls is None:
            raise InputError(f"unknown captioner {self.backend!r}; choose one of {', '.join(CAPTIONER_CLASSES)}")
        wanted = {
            "model_dir": self.model_dir,
            "url": self.url,
            "model_name": self.model_name or None,
            "prompt": self.prompt or None,
            "device": self.device,
            "dtype": self.dtype,
            "seed": self.seed,
            "max_new_tokens": self.max_new_tokens,
            "trust_remote_code": self.trust_remote_code,
            "keep_loaded": self.keep_loaded,
            "text": self.text,
        }
        accepted = accepted_options(cls)
        return {k: v for k, v in wanted.items() if k in accepted and v is not None}

    def key(self) -> tuple[Any, ...]:
        files = file_signature(self.model_dir) if self.model_dir and "model_dir" in self.options() else None
        return ("captioner", self, files)


# ------------------------------------------------------------------------------------- loading


@dataclass
class PipelineParts:
    """Everything a :class:`RestorePipeline` needs except the CLIP vision tower (loaded apart, often shared)."""

    models: Any
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: Any
    scheduler_config: dict[str, Any]


def load_pipeline_parts(
    sd: str | Path, sspir: str | Path, base: str | None = None, dtype: torch.dtype = torch.float32
) -> PipelineParts:
    """SD parts from ``sd`` and SSP-IR weights from ``sspir`` (a ``checkpoint-N/`` folder holds the full UNet;
    a compact file is applied to the SD UNet)."""
    from ..weights import load_sd_components
    from ..weights.checkpoint import load_sspir_weights

    official = Path(sspir).is_dir()
    parts = ("vae", "text_encoder") if official else ("unet", "vae", "text_encoder")
    components = load_sd_components(sd, base=base, parts=parts, dtype=dtype)
    models = load_sspir_weights(
        sspir, sd_unet=None if official else components.unet, base=base or components.base, dtype=dtype
    )
    return PipelineParts(
        models, components.vae, components.text_encoder, components.tokenizer, components.scheduler_config
    )


def load_pipeline(
    sd: str | Path,
    sspir: str | Path,
    clip_vision: str | Path,
    base: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    offload: bool = False,
) -> RestorePipeline:
    """A restore pipeline from files: the SD checkpoint, the SSP-IR weights and the CLIP ViT-L/14 vision file."""
    from ..weights import load_clip_vision
    from .pipeline import RestorePipeline

    parts = load_pipeline_parts(sd, sspir, base=base)
    clip = load_clip_vision(clip_vision)
    return RestorePipeline(
        parts.models,
        parts.vae,
        parts.text_encoder,
        parts.tokenizer,
        clip,
        parts.scheduler_config,
        device=device,
        dtype=dtype,
        offload=offload,
    )


class MissingClipVision(nn.Module):
    """Stands in for the CLIP tower when none is connected; says what to connect if it is ever needed."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        raise InputError("this run needs the CLIP vision model: connect an SSP-IR CLIP Vision Loader")


def pipeline_for(model: ModelSpec, clip: ClipVisionSpec | None) -> RestorePipeline:
    """The restore pipeline for these specs, from the cache when it holds them."""
    from ..weights import load_clip_vision
    from .pipeline import RestorePipeline

    parts = MODELS.get(model.key(), lambda: load_pipeline_parts(model.sd, model.sspir, model.base, model.dtype))
    encoder = CLIP_VISION.get(clip.key(), lambda: load_clip_vision(clip.path)) if clip else MissingClipVision()
    # lazy: each stage places only its own modules (a prior node moves no UNet); the cache's lock is the pipeline's
    return RestorePipeline(
        parts.models,
        parts.vae,
        parts.text_encoder,
        parts.tokenizer,
        encoder,
        parts.scheduler_config,
        device=model.device,
        dtype=model.dtype,
        offload=model.offload,
        lazy=True,
        lock=RUN_LOCK,
    )


def after_run(
    model: ModelSpec,
    clip: ClipVisionSpec | None = None,
    priors: tuple[ImageEmbedPrior | StructurePrior | None, ...] = (),
) -> None:
    """Apply the spec's cache choice once a run is over (see :data:`CACHE_CHOICES`); the ``priors`` the run used
    follow it: they stay on the device with "on device" and go to RAM with "in RAM" and "off"."""
    from ..models.build import move_module

    with RUN_LOCK:
        if model.cache != "on device" and model.device.type != "cpu":
            for prior in priors:
                if prior is not None:
                    prior.move_to(torch.device("cpu"))
        if model.cache == "off":
            MODELS.drop(model.key())
            if clip is not None:
                CLIP_VISION.drop(clip.key())
        elif model.cache == "in RAM" and model.device.type != "cpu":
            parts = MODELS.peek(model.key())
            modules = (
                [] if parts is None else [parts.vae, parts.text_encoder, *(m for _, m in parts.models.named_modules_())]
            )
            if clip is not None and CLIP_VISION.peek(clip.key()) is not None:
                modules.append(CLIP_VISION.peek(clip.key()))
            for m in modules:
                move_module(m, torch.device("cpu"))
        if model.device.type == "cuda":
            torch.cuda.empty_cache()


def captioner_for(spec: CaptionerSpec) -> Captioner:
    return CAPTIONER_CACHE.get(spec.key(), lambda: get_captioner(spec.backend, **spec.options()))


# ------------------------------------------------------------------------------------- priors


def output_size(image: torch.Tensor, upscale: float, size: tuple[int, int] | None) -> tuple[int, int]:
    """``(width, height)`` of the restored image, as :func:`~sspir_core.image_io.prepare_lq` gives it (with its
    checks), computed from the image's shape: nothing is resized to learn it."""
    return lq_output_size(image.shape[-1], image.shape[-2], upscale, size)


def prior_home(model: ModelSpec) -> torch.device:
    """Where a computed prior waits for the sampler: on the device it was made on and will be used on (no trip
    through the host), unless the model offloads (a low-VRAM choice: then in RAM, as the modules are)."""
    return torch.device("cpu") if model.offload else model.device


@dataclass(eq=False)
class ImageEmbedPrior:
    """The implicit semantic prior: Refine(CLIP patch tokens) of the LQ upscaled to the output size."""

    model: ModelSpec
    clip: ClipVisionSpec
    image: torch.Tensor  # the LQ batch it is made from, [B,3,h,w] on the CPU
    computed: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return self.image.shape[0]

    def at(self, size: tuple[int, int], run: Run | None = None) -> torch.Tensor:
        """The embedding for output size ``(width, height)``: [B, tokens, 512] in the model's dtype, on
        :func:`prior_home`."""
        size = (int(size[0]), int(size[1]))
        if size not in self.computed:
            prepared = prepare_lq(self.image, target_size=size)
            y0, y1, x0, x1 = prepared.box
            if run is not None:
                run.begin(plan_prior("clip", 1, size, self.batch))
            with RUN_LOCK:
                pipe = pipeline_for(self.model, self.clip)
                emb = pipe.encode_image(prepared.image[..., y0:y1, x0:x1], run)
                self.computed[size] = emb.to(prior_home(self.model))
        return self.computed[size]

    def move_to(self, device: torch.device) -> None:
        """Move every computed embedding to ``device`` (the sampler's cache choice after a run)."""
        for size, emb in self.computed.items():
            self.computed[size] = emb.to(device)


@dataclass(eq=False)
class StructurePrior:
    """The structure prior: Processor features of the padded LQ at the output size (+ its RGB predictions)."""

    model: ModelSpec
    image: torch.Tensor
    tile: int | None = 8 * 96  # pixels; an exact tiled pass (same result), bounds memory on large images
    computed: dict[tuple[int, int], tuple[torch.Tensor, list[torch.Tensor]]] = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return self.image.shape[0]

    def at(self, size: tuple[int, int], run: Run | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Features [B, C, Hp/8, Wp/8] (model dtype, on :func:`prior_home`) and RGB maps (padded size, on the CPU,
        where the preview is made) for output size ``(width, height)``."""
        size = (int(size[0]), int(size[1]))
        if size not in self.computed:
            prepared = prepare_lq(self.image, target_size=size)
            if run is not None:
                run.begin(
                    plan_prior("processor", processor_tiles(*prepared.image.shape[-2:], self.tile), size, self.batch)
                )
            with RUN_LOCK:
                pipe = pipeline_for(self.model, None)
                features, rgbs = pipe.structure_prior(prepared.image, tile=self.tile, run=run)
            self.computed[size] = (features.to(prior_home(self.model)), [r.cpu() for r in rgbs])
        return self.computed[size]

    def move_to(self, device: torch.device) -> None:
        """Move every computed feature map to ``device`` (the sampler's cache choice after a run)."""
        for size, (features, rgbs) in self.computed.items():
            self.computed[size] = (features.to(device), rgbs)


# ------------------------------------------------------------------------------------- the sampler


def restore_components(
    model: ModelSpec,
    image: torch.Tensor,
    captions: list[str],
    options: RestoreOptions,
    upscale: float = 4.0,
    size: tuple[int, int] | None = None,
    image_embed: ImageEmbedPrior | None = None,
    structure: StructurePrior | None = None,
    clip: ClipVisionSpec | None = None,
    callback: StepCallback | None = None,
    run: Run | None = None,
) -> torch.Tensor:
    """Restore ``image`` ([B,3,h,w] in [0,1]) with priors from other nodes, each brought to this output size.

    Without priors it computes them itself (then ``clip`` is needed): the same as
    :func:`~sspir_core.restore.pipeline.restore_image`. ``run``: progress, the log's announcement and cancel points.
    """
    prepared = prepare_lq(image, upscale=upscale, target_size=size)
    out_size = prepared.size
    b = image.shape[0]
    for prior, what in ((image_embed, "CLIP image embedding"), (structure, "structure prior")):
        if prior is not None and prior.batch != b:
            raise InputError(
                f"the {what} was made from {prior.batch} image(s) but the sampler got {b}: "
                "connect the same IMAGE to both nodes"
            )
    for prior in (image_embed, structure):
        if prior is not None and prior.image.shape[-2:] != image.shape[-2:]:
            log.info(
                "SSP-IR: a prior was made from a %s image, the sampler's LQ is %s; using the prior's image "
                "at the output size",
                tuple(prior.image.shape[-2:]),
                tuple(image.shape[-2:]),
            )
    from .pipeline import Priors

    clip = clip or (image_embed.clip if image_embed is not None else None)
    with RUN_LOCK:
        emb = image_embed.at(out_size, run) if image_embed is not None else None
        features = structure.at(out_size, run)[0] if structure is not None else None
        pipe = pipeline_for(model, clip)
        return pipe.restore(
            prepared.image, captions, options, callback, box=prepared.box, priors=Priors(emb, features), run=run
        )
