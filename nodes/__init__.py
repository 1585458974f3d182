"""Thin ComfyUI node classes (V3 API), one concept per module; all work happens in ``sspir_core``.

Import the node modules only through :func:`node_list` (they import ``comfy_api`` through ``nodes.api``, which
exists only inside ComfyUI), so ``import nodes`` stays cheap and works anywhere.
"""

from __future__ import annotations


def node_list() -> list:
    """The node classes this pack registers; also adds the ``sspir`` and ``LLM`` model folders to ComfyUI's list
    and puts its nodes' validation errors on their widgets."""
    from . import host
    from .caption import SSPIRCaption
    from .captioner_loader import SSPIRCaptionerLoader
    from .clip_image_embed import SSPIRClipImageEmbed
    from .clip_vision_loader import SSPIRClipVisionLoader
    from .model_loader import SSPIRModelLoader
    from .native_apply import SSPIRApply
    from .native_color_fix import SSPIRColorFix
    from .native_latent import SSPIRLQLatent
    from .native_loader import SSPIRPatchLoader
    from .native_schedule import SSPIRSchedule
    from .native_text import SSPIRTextEncode
    from .restore import SSPIRRestore
    from .sampler import SSPIRSampler
    from .structure_processor import SSPIRStructureProcessor

    host.register_model_folders()
    nodes = [
        SSPIRModelLoader,
        SSPIRClipVisionLoader,
        SSPIRCaptionerLoader,
        SSPIRCaption,
        SSPIRClipImageEmbed,
        SSPIRStructureProcessor,
        SSPIRSampler,
        SSPIRRestore,
        SSPIRPatchLoader,
        SSPIRApply,
        SSPIRTextEncode,
        SSPIRLQLatent,
        SSPIRSchedule,
        SSPIRColorFix,
    ]
    host.attach_errors_to_widgets(nodes)  # each widget problem once, on its widget
    return nodes
