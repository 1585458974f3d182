"""ComfyUI glue of the native route: SSP-IR as patches on a clone of the user's MODEL.

Hooks used (all public, all on the clone, all appended to what is there; checked against ComfyUI 0.3.75 and
0.33.0, newer features found by probing, never by version number):
- A patcher around :class:`~sspir_core.native.patch.NativePatch`, attached with ``set_additional_models``:
  ``load_models_gpu`` loads, partially loads and offloads our weights with the UNet; its leaf layers are
  ComfyUI's casting ops (``comfy.ops.disable_weight_init``) so low-VRAM partial loading can leave them on the
  offload device. It is built as the host's own model-patch loaders build theirs (:func:`build_patcher`): the
  host's ``CoreModelPatcher`` where it has one (``ModelPatcherDynamic`` when ComfyUI runs with dynamic VRAM,
  so one non-dynamic model does not turn off ``free_for_dynamic`` for the whole load), the weights' dtypes
  archived (``archive_model_dtypes``) and a ``cached_patcher_init`` factory (MultiGPU deep clones reload the
  weights through it; each device's copy is found by :meth:`SSPIRPatch.module_for`).
- ``add_object_patch("diffusion_model.{input,middle,output}_blocks.N", block)``: the same layers, under the same
  names (so LoRA keys and weight patches still find them), with parameterless :class:`SSPIRHook` markers inserted
  where SSP-IR's image attention (before the SpatialTransformer) and pixel attention (after it) run.
- ``set_model_forward_timestep_embed_patch((SSPIRHook, run_hook))``: ComfyUI's ``forward_timestep_embed`` calls
  :func:`run_hook` for those markers.
- ``add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, ...)``: runs the SSP-IR ControlNet on the model input at each
  call, adds its residuals to ``control`` (summed with any other ControlNet's) and hands the raw residuals to the
  pixel attentions through ``transformer_options``.
- ``add_object_patch("model_sampling", ...)`` (start "paper" only): a subclass of the model's own sampling whose
  start-of-sampling noising is the official start (the LQ latent noised to t=999), see
  :mod:`sspir_core.native.schedule`; with ``add_wrapper_with_key(WrappersMP.SAMPLER_SAMPLE, ...)``, which sees
  the whole sigmas of each sampling and tells it whether this one is a full denoise (else: ComfyUI's img2img).
- ``add_wrapper_with_key(WrappersMP.PREDICT_NOISE, ...)``: the guided prediction of each sampling's first call is
  checked once for NaN/inf, so a bad cfg, strength or weights fail at the sampler with their likely cause.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import comfy.patcher_extension
import torch
from comfy.ldm.modules.attention import SpatialTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import TimestepEmbedSequential, Upsample
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from sspir_core.errors import InputError
from sspir_core.image_io import pad_to_multiple
from sspir_core.native.control import merge_control as _merge_control
from sspir_core.native.layout import HookSite, residual_shapes
from sspir_core.native.patch import NativePatch, load_native_patch
from sspir_core.native.schedule import paper_start, paper_start_applies, to_ddpm
from sspir_core.native.tiles import crop_control
from sspir_core.restore.tiling import blend_tiles
from sspir_core.weights.clip_vision import ClipVisionEncoder

STATE_KEY = "sspir_native"
_CAST_OPS = {
    nn.Linear: comfy.ops.disable_weight_init.Linear,
    nn.Conv2d: comfy.ops.disable_weight_init.Conv2d,
    nn.GroupNorm: comfy.ops.disable_weight_init.GroupNorm,
    nn.LayerNorm: comfy.ops.disable_weight_init.LayerNorm,
}
UNSET = object()  # "max_denoise not given": KSAMPLER passes it only when it noises the start


# ---------------------------------------------------------------------------------------------- the patch object


def _same_device(a: torch.device, b: torch.device) -> bool:
    """``cuda:0`` and ``cuda`` (or ``mps:0`` and ``mps``) are the same device here."""
    a, b = torch.device(a), torch.device(b)
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


@dataclass
class SSPIRPatch:
    """What SSP-IR Patch Loader hands on: our weights inside their own patcher, and where they came from.

    ``copies``: the patchers of MultiGPU deep clones of ``patcher`` (by load device), registered by the host's
    ``ON_DEEPCLONE_MULTIGPU`` callback, so a UNet copy running on another GPU uses the SSP-IR weights on it.
    """

    patcher: comfy.model_patcher.ModelPatcher
    source: str
    copies: dict[str, Any] = field(default_factory=dict)

    @property
    def module(self) -> NativePatch:
        return self.patcher.model

    def module_for(self, device: torch.device) -> NativePatch:
        """The weights to run next to a UNet call on ``device``: ours, or a MultiGPU deep clone's."""
        if _same_device(device, self.patcher.load_device):
            return self.module
        for where, copy_patcher in self.copies.items():
            if _same_device(device, torch.device(where)):
                return copy_patcher.model
        if self.copies:
            raise InputError(
                f"Apply SSP-IR: the UNet runs on {device} but SSP-IR's weights (SSP-IR Patch Loader, "
                f"{Path(self.source).name}) were copied only to {self.patcher.load_device} and "
                f"{', '.join(self.copies)}: re-queue the prompt so the MultiGPU setup copies the MODEL "
                "with Apply SSP-IR's patch, or sample on one GPU"
            )
        return self.module  # as before MultiGPU: casting layers follow the input's device


def _patcher_class(disable_dynamic: bool) -> type:
    """The host's class for a loaded model: ``CoreModelPatcher`` where the host has one (it is
    ``ModelPatcherDynamic`` when ComfyUI runs with dynamic VRAM), else ``ModelPatcher`` (ComfyUI 0.3.75)."""
    mp = comfy.model_patcher
    return mp.ModelPatcher if disable_dynamic else getattr(mp, "CoreModelPatcher", mp.ModelPatcher)


def _register_copies(patch: SSPIRPatch) -> None:
    """Where the host makes MultiGPU deep clones, remember each clone of our patcher by its load device."""
    callbacks = getattr(comfy.patcher_extension, "CallbacksMP", None)
    event = getattr(callbacks, "ON_DEEPCLONE_MULTIGPU", None)
    if event is None or not hasattr(patch.patcher, "add_callback"):
        return

    copies = patch.copies  # not ``patch``: the patcher must not hold the SSPIRPatch that holds it

    def remember(_original: Any, clone: Any) -> None:
        copies[str(clone.load_device)] = clone

    patch.patcher.add_callback(event, remember)


def _to_cast_layers(module: nn.Module) -> None:
    """Make the torch leaf layers of ``module`` ComfyUI's casting layers, in place, keeping their tensors.

    Partial (low-VRAM) loading can then leave some on the offload device: the host's layers cast each weight to
    the input's device at call time. The host's own model-patch loaders get these layers by building their
    (ComfyUI-written) modules with ``operations=comfy.ops.manual_cast``; ours are diffusers' modules
    (``ControlNetModel``, ``Transformer2DModel``, ...), which call ``nn.Linear``/``nn.Conv2d``/... directly and take
    no operations argument, so sspir_core (which never imports ComfyUI) cannot hand them a factory short of
    reimplementing them or patching ``torch.nn`` while they are built (process-wide, not thread-safe). Rebuilding
    each leaf through the host's constructors and moving its tensors over would tie us to their signatures, which
    change between hosts (0.33's ``Linear`` skips ``nn.Linear.__init__`` under its lazy loader). The class swap
    is sound because each host class is a subclass of the exact torch class it replaces that adds methods (the
    casting ``forward``, loading) and class-level flags (``CastWeightBiasOp``) but no state a loaded layer lacks:
    the per-weight dtypes that 0.33's lazy ``Linear`` sets in ``__init__`` are set here by
    ``archive_model_dtypes`` (0.3.75 has neither). Subclasses of the torch layers are left as they are.
    """
    for m in module.modules():
        cast = _CAST_OPS.get(type(m))
        if cast is not None:
            m.__class__ = cast


def build_patcher(path: str, dtype: torch.dtype, disable_dynamic: bool = False) -> comfy.model_patcher.ModelPatcher:
    """SSP-IR weights on ComfyUI's offload device in the patcher the host's own model-patch loaders build.

    ``disable_dynamic``: a plain ``ModelPatcher`` (what the host asks of a ``cached_patcher_init`` factory for a
    non-dynamic delegate).
    """
    module = load_native_patch(path, device=mm.unet_offload_device(), dtype=dtype)
    _to_cast_layers(module)
    archive = getattr(mm, "archive_model_dtypes", None)
    if archive is not None:  # dynamic loading casts each weight back to its archived dtype
        archive(module)
    patcher = _patcher_class(disable_dynamic)(
        module, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    )
    if hasattr(patcher, "cached_patcher_init"):
        patcher.cached_patcher_init = (reload_patcher, (str(path), dtype))
    return patcher


def reload_patcher(path: str, dtype: torch.dtype, disable_dynamic: bool = False) -> comfy.model_patcher.ModelPatcher:
    """The ``cached_patcher_init`` factory: the host calls it to reload the weights, fresh each time, for a
    MultiGPU deep clone (or a non-dynamic delegate); a failure says what ComfyUI was doing and what to do."""
    try:
        return build_patcher(path, dtype, disable_dynamic)
    except Exception as exc:
        raise InputError(
            f"SSP-IR Patch Loader: ComfyUI reloads {path} to copy SSP-IR's weights (MultiGPU, dynamic "
            f"VRAM) and it cannot be read now ({exc}); put the file back, or queue the workflow again so "
            "SSP-IR Patch Loader loads it anew"
        ) from exc


def load_patch(path: str, dtype: torch.dtype) -> SSPIRPatch:
    """Load SSP-IR weights onto ComfyUI's offload device and wrap them in the host's patcher."""
    patch = SSPIRPatch(build_patcher(str(path), dtype), str(path))
    _register_copies(patch)
    return patch


# ---------------------------------------------------------------------------------------------- checks


def check_model(model: Any, patch: SSPIRPatch) -> None:
    """A clear error, before any sampling, when the MODEL is not the UNet the patch was trained on: another
    family (SDXL, ...), another size, or another prediction (v-prediction, e.g. SD2.1-768), named in both sides'
    words by :func:`sspir_core.weights.base_match.native_model_problem`."""
    from sspir_core.weights.base_match import native_model_problem

    base_model = model.model
    model_config = getattr(base_model, "model_config", None)
    config = getattr(model_config, "unet_config", None)
    unet = getattr(base_model, "diffusion_model", None)
    if config is not None and not hasattr(unet, "input_blocks"):
        config = None
    sampling = model.get_model_object("model_sampling")
    problem = native_model_problem(
        Path(patch.source).name,
        patch.module.base,
        patch.module.expected_ldm_config(),
        config,
        [c.__name__ for c in type(model_config).__mro__],
        [c.__name__ for c in type(sampling).__mro__],
    )
    if problem:
        raise InputError(problem[0].upper() + problem[1:])


# ---------------------------------------------------------------------------------------------- priors


class _ComfyTower(nn.Module):
    """ComfyUI's CLIP vision model in the call shape of a transformers ``CLIPVisionModel``: pixels in, a
    ``BaseModelOutputWithPooling`` out, whose ``last_hidden_state`` (the last encoder layer, before post-LN:
    ComfyUI's first output) is what :class:`ClipVisionEncoder` reads. The pooled output is left out: ComfyUI's
    pooled one is already projected, transformers' is not, and nothing here reads it."""

    def __init__(self, clip_vision: Any) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.empty(0), requires_grad=False)  # the dtype pixels are cast to (fp32)
        self._clip = clip_vision

    def forward(self, pixel_values: torch.Tensor) -> BaseModelOutputWithPooling:
        out = self._clip.model(pixel_values=pixel_values.to(self._clip.load_device), intermediate_output=-2)
        return BaseModelOutputWithPooling(last_hidden_state=out[0])


def clip_tokens(clip_vision: Any, real: torch.Tensor) -> torch.Tensor:
    """CLIP patch tokens of ``real`` ([B,3,H,W] in [0,1]) preprocessed as SSP-IR was trained (squash resize)."""
    model = getattr(clip_vision, "model", None)
    config = getattr(model, "vision_model", None)
    if model is None or not hasattr(clip_vision, "patcher") or config is None:
        raise InputError("clip_vision must come from ComfyUI's Load CLIP Vision node (a CLIP ViT-L/14 224 px)")
    size = int(getattr(clip_vision, "image_size", 224))
    patch_weight = config.embeddings.patch_embedding.weight
    encoder = ClipVisionEncoder(
        _ComfyTower(clip_vision), "transformers", size, int(patch_weight.shape[-1]), int(patch_weight.shape[0])
    )
    mm.load_model_gpu(clip_vision.patcher)
    return encoder(real)


@dataclass
class Priors:
    """The per-image priors, computed once at Apply time: image embedding [B,256,512], Processor features."""

    image_emb: torch.Tensor
    features: torch.Tensor
    size: tuple[int, int]  # output size (H, W) of the image they were made from
    _on: dict[Any, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # one copy per device (MultiGPU samples on several at once), never cleared under another thread
        found = self._on.get(device)
        if found is None:
            found = self._on[device] = (self.image_emb.to(device), self.features.to(device))
        return found


def compute_priors(patch: SSPIRPatch, clip_vision: Any, image: torch.Tensor, tile: int | None) -> Priors:
    """``image``: the LQ at the output size ([B,3,H,W] in [0,1]): CLIP sees it as is, the Processor padded to 8."""
    padded, _ = pad_to_multiple(image, 8)
    tokens = clip_tokens(clip_vision, image)
    mm.load_models_gpu([patch.patcher])
    module = patch.module
    with torch.no_grad():
        emb = module.image_embedding(tokens.to(patch.patcher.load_device))
        feats = module.structure(padded, tile=tile)
    keep = mm.intermediate_device()
    return Priors(emb.to(keep), feats.to(keep), tuple(image.shape[-2:]))


# ---------------------------------------------------------------------------------------------- the hooks


class SSPIRHook(nn.Module):
    """A parameterless marker inside a patched UNet block; :func:`run_hook` runs the SSP-IR attention it names."""

    def __init__(self, site: HookSite, owner: str) -> None:
        super().__init__()
        self.site = site
        self.owner = owner

    def extra_repr(self) -> str:
        return f"{self.site.kind} {self.site.key}"


def run_hook(
    layer: SSPIRHook, x: torch.Tensor, emb: Any, context: Any, transformer_options: dict, *_: Any
) -> torch.Tensor:
    """``forward_timestep_embed_patch`` handler: one image or pixel attention on ``x``."""
    run = transformer_options.get(STATE_KEY, {}).get(layer.owner)
    if run is None:  # the block was patched by an Apply SSP-IR whose wrapper is not on this model call
        return x
    site = layer.site
    if site.kind == "image":
        return run["patch"].attend(site.key, x, run["image_emb"])
    residuals = run["residuals"]
    if residuals is not None:
        context = residuals[site.residual]
    else:
        context = x.new_zeros((x.shape[0], *run["residual_shapes"][site.residual]))
    return run["patch"].attend(site.key, x, context)


def _patched_block(block: nn.Module, sites: list[HookSite], owner: str) -> TimestepEmbedSequential:
    """``block``'s layers under their own names, with our markers: image before the SpatialTransformer, pixel
    after it (after the ResBlock when there is none) and before any Upsample."""
    layers = list(block._modules.items())
    st = [i for i, (_, m) in enumerate(layers) if isinstance(m, SpatialTransformer)]
    image = [s for s in sites if s.kind == "image"]
    pixel = [s for s in sites if s.kind == "pixel"]
    if image and not st:
        raise InputError(
            f"UNet block {sites[0].block} {sites[0].index} has no SpatialTransformer where SSP-IR's "
            f"{image[0].key} sits: the MODEL's UNet does not have the patch's layout"
        )
    ups = [i for i, (_, m) in enumerate(layers) if isinstance(m, Upsample)]
    pixel_at = st[0] + 1 if st else 1
    if ups and pixel_at > ups[0]:
        raise InputError(f"UNet block output {sites[0].index}: unexpected layer order for SSP-IR's pixel attention")
    out = TimestepEmbedSequential()
    for i, (name, module) in enumerate(layers + [("", None)]):
        if image and st and i == st[0]:
            out.add_module("sspir_image", SSPIRHook(image[0], owner))
        if pixel and i == pixel_at:
            out.add_module("sspir_pixel", SSPIRHook(pixel[0], owner))
        if module is not None:
            out.add_module(name, module)
    return out


def _block_path(site: HookSite) -> str:
    if site.block == "middle":
        return "diffusion_model.middle_block"
    return f"diffusion_model.{site.block}_blocks.{site.index}"


@dataclass
class NativeRun:
    """The DIFFUSION_MODEL wrapper of one Apply SSP-IR: the ControlNet at every call, state for the hooks.

    With ``tile`` (latent px) set and a larger latent, the model call runs tile by tile (the UNet, our
    ControlNet and attentions on each tile, other ControlNets' residuals cut to it) and the outputs are blended
    with the Gaussian weights of :func:`sspir_core.restore.tiling.blend_tiles`, as PGA Sampler does: pixel
    attention is quadratic in the area it sees. Blending is linear, so blending the cond and uncond outputs
    before CFG gives PGA Sampler's blend of the guided output.
    """

    patch: SSPIRPatch
    priors: Priors
    strength: float
    sigma_range: tuple[float, float]  # active while sigma_end <= sigma <= sigma_start (as Apply ControlNet)
    owner: str
    tile: int | None = None  # latent px; None = the whole latent in one call
    tile_overlap: int = 0

    def __call__(
        self,
        executor: Any,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        y: Any,
        control: Any,
        transformer_options: dict,
        **kwargs: Any,
    ) -> torch.Tensor:
        image_emb, features = self.priors.on(x.device)
        b = image_emb.shape[0]
        chunks = max(1, len(transformer_options.get("cond_or_uncond", [0])))  # cond/uncond rows of one batch
        if x.shape[0] != chunks * b:
            raise InputError(
                f"Apply SSP-IR got {b} LQ image(s) but the sampler's latent batch is "
                f"{x.shape[0] // chunks}: give the sampler the latent of the same images (SSP-IR LQ "
                "Latent of that IMAGE)"
            )
        if tuple(x.shape[-2:]) != tuple(features.shape[-2:]):
            h, w = self.priors.size
            raise InputError(
                f"Apply SSP-IR's image is {w}x{h} px (latent {features.shape[-1]}x{features.shape[-2]}) "
                f"but the sampler's latent is {x.shape[-1]}x{x.shape[-2]}: feed Apply SSP-IR the image "
                "output of SSP-IR LQ Latent that made this latent"
            )
        sigma = float(transformer_options.get("sigmas", torch.zeros(1)).max())
        hi, lo = self.sigma_range
        active = lo <= sigma <= hi and self.strength != 0

        def run(x_in: torch.Tensor, feats: torch.Tensor, control_in: Any) -> torch.Tensor:
            return self._one_call(
                executor, x_in, timesteps, context, y, control_in, transformer_options, image_emb, feats, active, kwargs
            )

        h, w = x.shape[-2:]
        if self.tile is None or (h <= self.tile and w <= self.tile):
            return run(x, features, control)

        def one_tile(x_tile: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
            y0, y1, x0, x1 = box
            return run(x_tile, features[..., y0:y1, x0:x1], crop_control(control, box, (h, w)))

        return blend_tiles(
            one_tile, x, self.tile, self.tile_overlap, on_tile=mm.throw_exception_if_processing_interrupted
        )

    def _one_call(
        self,
        executor: Any,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        y: Any,
        control: Any,
        transformer_options: dict,
        image_emb: torch.Tensor,
        features: torch.Tensor,
        active: bool,
        kwargs: dict,
    ) -> torch.Tensor:
        """One UNet call on ``x`` (the whole latent or one tile) with our ControlNet's residuals merged in."""
        module = self.patch.module_for(x.device)
        residuals = None
        shapes = None
        if active:
            with torch.no_grad():
                downs, mid = module.control(x, timesteps, context, image_emb, features, self.strength)
            control = _merge_control(control, downs, mid)
            residuals = downs
        else:  # pixel attentions then see zeros, as the reference UNet without residuals
            shapes = residual_shapes(module.controlnet.config, *x.shape[-2:])
        options = dict(transformer_options)
        runs = dict(options.get(STATE_KEY, {}))
        runs[self.owner] = {"patch": module, "image_emb": image_emb, "residuals": residuals, "residual_shapes": shapes}
        options[STATE_KEY] = runs
        return executor(x, timesteps, context, y, control, options, **kwargs)


# ---------------------------------------------------------------------------------------------- paper start


class _PaperStart:
    """Marker base of the patched ``model_sampling`` classes; ``sspir_paper_start`` is set by :func:`start_scope`
    for the duration of one sampling (None outside one)."""

    sspir_paper_start: bool | None = None


def paper_model_sampling(base: Any) -> Any:
    """A copy of the MODEL's ``model_sampling`` whose start-of-sampling noising is the official SSP-IR start.

    KSAMPLER passes ``max_denoise`` explicitly only when it noises the starting latent, so other callers
    (inpainting, samplers that add noise between steps) keep ComfyUI's own noising. Which samplings start the
    paper's way is decided from their whole sigmas by :func:`start_scope` (see
    :func:`sspir_core.native.schedule.paper_start_applies`); without it, ComfyUI's ``max_denoise`` decides. A
    sampling that ends at ``sigma_table[0]`` (SSP-IR Schedule, ddim) returns the latent in the DDPM
    parametrisation, as diffusers' DDIM does.
    """
    parent = type(base)

    class SSPIRPaperStart(parent, _PaperStart):  # type: ignore[misc, valid-type]
        def noise_scaling(self, sigma, noise, latent_image, max_denoise=UNSET):  # noqa: ANN001, ANN202
            if max_denoise is UNSET:
                return super().noise_scaling(sigma, noise, latent_image)
            s = float(torch.as_tensor(sigma).flatten()[0])
            paper = max_denoise if self.sspir_paper_start is None else self.sspir_paper_start
            if paper:
                return paper_start(latent_image, noise, s, float(self.sigmas[-1]))
            return super().noise_scaling(sigma, noise, latent_image, max_denoise)

        def inverse_noise_scaling(self, sigma, latent):  # noqa: ANN001, ANN202
            s = float(torch.as_tensor(sigma).flatten()[0])
            if s > 0 and s == float(self.sigmas[0]):
                return to_ddpm(super().inverse_noise_scaling(sigma, latent), s)
            return super().inverse_noise_scaling(sigma, latent)

    return retyped_sampling(base, SSPIRPaperStart)


def retyped_sampling(base: Any, cls: type) -> Any:
    """The MODEL's ``model_sampling`` as a new instance of ``cls``, a subclass of its own class.

    As the host's ModelSampling* nodes (``comfy_extras/nodes_model_advanced.py``), ``cls`` is a class combined at
    run time (there: ``ModelSamplingAdvanced(sampling_base, sampling_type)``; here: the MODEL's sampling class,
    whatever it is, plus our start) and the clone gets a fresh instance by ``add_object_patch``. Unlike those
    nodes, the instance is not built by ``cls(model_config)``: that recomputes the schedule from the checkpoint's
    settings and drops what the MODEL's sampling holds beyond them (another ModelSampling node's zsnr, a distilled
    table, ``set_sigmas``; custom sampling classes take other arguments). It is made without ``__init__`` and given
    ``base``'s attributes, with its own dicts of buffers, parameters and submodules holding the same tensors: the
    schedule is shared, ``base`` is left as it is, and the clone's patch changes only how sampling starts.
    """
    out = cls.__new__(cls)
    out.__dict__.update(base.__dict__)
    out._parameters, out._buffers, out._modules = dict(base._parameters), dict(base._buffers), dict(base._modules)
    out._non_persistent_buffers_set = set(base._non_persistent_buffers_set)
    return out


def start_scope(executor: Any, guider: Any, sigmas: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """``SAMPLER_SAMPLE`` wrapper: tells the patched ``model_sampling`` whether this sampling starts the paper's
    way. ComfyUI's sampler noises the start knowing only ``sigmas[0]``; here the whole ``sigmas`` is known."""
    sampling = getattr(getattr(guider, "inner_model", None), "model_sampling", None)
    if not isinstance(sampling, _PaperStart):  # another node replaced our model_sampling: its noising stands
        return executor(guider, sigmas, *args, **kwargs)
    before = sampling.sspir_paper_start
    sampling.sspir_paper_start = paper_start_applies(sigmas, sampling.sigmas)
    try:
        return executor(guider, sigmas, *args, **kwargs)
    finally:
        sampling.sspir_paper_start = before


_CHECKED = "sspir_finite_checked"


def check_first_prediction(
    executor: Any, x: torch.Tensor, timestep: torch.Tensor, model_options: dict | None = None, seed: Any = None
) -> torch.Tensor:
    """``PREDICT_NOISE`` wrapper: the guided prediction of a sampling's first call must be finite.

    Checked once per sampling (``model_options`` is the sampling's own copy) and after CFG, so a non-finite
    cfg is caught as well as a broken model; a NaN otherwise travels silently to the image and surfaces only at
    Colour Fix or as a black picture.
    """
    out = executor(x, timestep, {} if model_options is None else model_options, seed)
    options = (model_options or {}).get("transformer_options")
    in_sampling = isinstance(options, dict) and "sample_sigmas" in options  # else a lone call: check it
    if not (in_sampling and options.get(_CHECKED)):
        if in_sampling:
            options[_CHECKED] = True
        if not bool(torch.isfinite(out).all()):
            raise InputError(non_finite_message(x, timestep, getattr(executor, "class_obj", None)))
    return out


def non_finite_message(x: torch.Tensor, timestep: torch.Tensor, guider: Any) -> str:
    """The error for a non-finite first prediction, naming the cause when it is visible here."""
    sigma = float(torch.as_tensor(timestep).flatten()[0])
    head = f"SSP-IR: the model's prediction at the first step (sigma {sigma:.4g}) contains NaN or infinite values"
    cfg = getattr(guider, "cfg", None)
    if isinstance(cfg, (int, float)) and not math.isfinite(cfg):
        return f"{head}: the sampler's cfg is {cfg}; give it a finite number (the paper uses 7.5)."
    if not bool(torch.isfinite(x).all()):
        return (
            f"{head}: the sampler's latent is already not finite; check the latent input (SSP-IR LQ Latent of "
            "the LQ image, the VAE)."
        )
    return (
        f"{head}. Likely causes: a non-finite cfg or Apply SSP-IR strength; a broken LoRA, checkpoint or "
        "SSP-IR weights; fp16 overflow (load the checkpoint and SSP-IR Patch Loader in fp32 or bf16)."
    )


# ---------------------------------------------------------------------------------------------- apply


def apply(
    model: Any,
    patch: SSPIRPatch,
    priors: Priors,
    strength: float,
    start_percent: float,
    end_percent: float,
    paper: bool,
    tile: int | None = None,
    tile_overlap: int = 0,
) -> Any:
    """A clone of ``model`` with SSP-IR added (see the module docstring for the hooks)."""
    check_model(model, patch)
    clone = model.clone()
    owner = uuid.uuid4().hex[:12]
    by_block: dict[str, list[HookSite]] = {}
    for site in patch.module.sites:
        by_block.setdefault(_block_path(site), []).append(site)
    unet = model.model.diffusion_model
    n_in, n_out = len(unet.input_blocks), len(unet.output_blocks)
    want = len(patch.module.controlnet.controlnet_down_blocks)
    if n_in != want or n_out != want:
        raise InputError(f"the MODEL's UNet has {n_in} input and {n_out} output blocks, the SSP-IR patch needs {want}")
    for path, sites in by_block.items():
        clone.add_object_patch(path, _patched_block(clone.get_model_object(path), sites, owner))
    clone.set_model_forward_timestep_embed_patch((SSPIRHook, run_hook))
    sampling = clone.get_model_object("model_sampling")
    sigma_range = (float(sampling.percent_to_sigma(start_percent)), float(sampling.percent_to_sigma(end_percent)))
    clone.add_wrapper_with_key(
        comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL,
        f"sspir_{owner}",
        NativeRun(patch, priors, strength, sigma_range, owner, tile, tile_overlap),
    )
    clone.add_wrapper_with_key(
        comfy.patcher_extension.WrappersMP.PREDICT_NOISE, f"sspir_{owner}", check_first_prediction
    )
    if paper:
        clone.add_object_patch("model_sampling", paper_model_sampling(sampling))
        clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, f"sspir_{owner}", start_scope)
    clone.set_additional_models(f"sspir_{owner}", [patch.patcher])
    return clone
