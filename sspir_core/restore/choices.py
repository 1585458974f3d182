"""The names a restore's settings take: the samplers and the colour fixes.

Nothing here imports torch or diffusers, so the CLI lists them as ``--scheduler``/``--color-fix`` choices while
``sspir --help`` stays light, and the nodes' widgets read the same registries when ComfyUI lists the nodes.
"""

from __future__ import annotations

SCHEDULERS: dict[str, str] = {
    "ddpm": "DDPMScheduler",  # the paper's sampler (50 steps)
    "ddim": "DDIMScheduler",
    "dpmpp": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
}
"""Sampler name -> diffusers scheduler class, by name: diffusers is imported on the first restore, not when
ComfyUI lists the nodes (the names are all a node's widget needs)."""

COLOR_FIX_METHODS: tuple[str, ...] = ("adain", "wavelet", "none")
"""Colour fixes (:mod:`.color_fix`), the paper's (adain) first, as the CLI and the nodes list them."""
