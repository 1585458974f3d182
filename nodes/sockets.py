"""The pack's custom socket types, defined once; node categories."""

from __future__ import annotations

from .api import io

CATEGORY = "SSP-IR"
LOADERS = "SSP-IR/loaders"

SSPIRModel = io.Custom("SSPIR_MODEL")
"""A loaded-on-demand SSP-IR model (base SD + SSP-IR weights + device/dtype):
sspir_core.restore.components.ModelSpec."""
SSPIRClipVision = io.Custom("SSPIR_CLIP_VISION")
"""The CLIP ViT-L/14 vision tower: sspir_core.restore.components.ClipVisionSpec."""
SSPIRCaptioner = io.Custom("SSPIR_CAPTIONER")
"""A captioner backend and its settings: sspir_core.restore.components.CaptionerSpec."""
SSPIRImageEmbed = io.Custom("SSPIR_IMAGE_EMBED")
"""The implicit semantic prior: sspir_core.restore.components.ImageEmbedPrior."""
SSPIRStructure = io.Custom("SSPIR_STRUCTURE")
"""The structure prior: sspir_core.restore.components.StructurePrior."""
SSPIRPatchSocket = io.Custom("SSPIR_PATCH")
"""SSP-IR's own weights for the native route, managed by ComfyUI: nodes.native_patch.SSPIRPatch."""
NATIVE = "SSP-IR/native"
