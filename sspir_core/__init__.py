"""SSP-IR core: the networks, weight I/O, the restore path, captioners, training and evaluation.

Never imports ComfyUI. The folders follow a restore, LQ -> priors -> sampler -> image:
``models/`` (the networks and their build), ``weights/`` (SSP-IR checkpoints and the frozen base loaders),
``captioners/`` (the explicit semantic prior), ``restore/`` (prompt, tiling, pipeline, colour fix, output),
``native/`` (SSP-IR as a patch on a host's UNet), ``training/``, ``evaluation/``, ``bench/``, ``demo/`` (tiny
random models) and ``cli/``.

Layers, bottom to top; a package imports only its own modules and lower layers (``tests/test_code_layers.py``):

1. ``errors``; then ``files``, ``image_io``, ``devices``, ``host`` (the ComfyUI harness) and the ``configs/``
   data: no model knowledge.
2. ``captioners``: self-contained, on the base only.
3. ``models``: the networks; they read no files and know no sampler (SD's training schedule is
   ``models/sd_schedule.py``).
4. ``weights``: files to modules (:class:`~sspir_core.weights.sspir_file.SSPIRFile` reads every SSP-IR file).
5. ``restore``: samplers, the pipeline and its options; 6. ``native``: the ComfyUI-free half of the native route.
7. ``evaluation`` and ``demo`` (toy models); 8. ``training`` (it builds on the demo presets);
9. ``bench``; 10. ``cli``; on top, the ComfyUI ``nodes/``. No module imports another's ``_private`` names.

Restore a photo with your own weights (a ComfyUI-layout SD1.5 single file, a CLIP ViT-L/14 vision file
and an SSP-IR checkpoint, official ``checkpoint-N/`` folder or compact file)::

    import torch
    from sspir_core import RestoreOptions, get_captioner, load_image, load_pipeline, restore_image, save_png

    pipe = load_pipeline("v1-5-pruned-emaonly.safetensors", "sspir.safetensors",
                         "clip-vit-large-patch14.safetensors", device="cuda", dtype=torch.float16)
    lq = load_image("photo.png").rgb                                  # [1, 3, H, W] in [0, 1]
    caption = get_captioner("llava", model_dir="models/LLM/llava-1.5-7b-hf").caption(lq)[0]
    image = restore_image(pipe, lq, caption, RestoreOptions(steps=50, cfg=7.5), upscale=4)
    save_png(image, "restored.png")

Public names are imported on first use, so ``import sspir_core`` (and ``sspir --help``) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "BASES": "models.build",
    "SSPIRModels": "models.build",
    "build_models": "models.build",
    "load_official_checkpoint": "weights.checkpoint",
    "load_sspir_weights": "weights.checkpoint",
    "save_compact": "weights.checkpoint",
    "save_official_checkpoint": "weights.checkpoint",
    "RestoreOptions": "restore.options",
    "RestorePipeline": "restore.pipeline",
    "load_pipeline": "restore.components",
    "restore_image": "restore.pipeline",
    "CAPTIONERS": "captioners",
    "get_captioner": "captioners",
    "load_image": "image_io",
    "save_png": "image_io",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
