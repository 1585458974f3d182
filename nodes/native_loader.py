"""SSP-IR Patch Loader: SSP-IR's own weights for the native route, managed by ComfyUI's model management."""

from __future__ import annotations

import torch

from sspir_core.devices import DTYPE_NAMES, torch_dtype
from sspir_core.restore.model_cache import file_signature

from . import host
from .api import io
from .sockets import NATIVE, SSPIRPatchSocket


class SSPIRPatchLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SSPIRPatchLoader",
            display_name="SSP-IR Patch Loader",
            category=NATIVE,
            description="Loads only what SSP-IR adds to Stable Diffusion (ControlNet with the Processor, Refine "
            "layer, image and pixel attentions) for Apply SSP-IR. ComfyUI loads and offloads these weights together "
            "with the UNet (low-VRAM partial loading and unloading between prompts included).",
            inputs=[
                io.Combo.Input(
                    "sspir_weights",
                    options=host.sspir_choices(),
                    tooltip=(
                        "SSP-IR weights from models/sspir:\n- a compact .safetensors\n- or an official checkpoint-N/ "
                        "folder from the authors' train.py (only the SSP-IR parts of its unet/ are read; the SD "
                        "weights come from your MODEL)\nOne-step weights (compact lora.* tensors, or a folder's "
                        "lora/ and one_step.json) carry a UNet LoRA: Apply SSP-IR adds it to the MODEL; sample "
                        "with KSampler, 1 step, cfg 1, euler, scheduler simple."
                    ),
                ),
                io.Combo.Input(
                    "dtype",
                    options=["auto", *DTYPE_NAMES],
                    default="auto",
                    tooltip=(
                        "Precision of the SSP-IR weights. auto: what ComfyUI picks for a UNet on this device "
                        "(fp32 on the CPU)."
                    ),
                ),
            ],
            outputs=[SSPIRPatchSocket.Output(display_name="sspir_patch", tooltip="For Apply SSP-IR.")],
        )

    @classmethod
    def fingerprint_inputs(cls, sspir_weights: str, dtype: str) -> object:
        try:
            return file_signature(host.resolve_in("sspir", sspir_weights, "sspir_weights")), dtype
        except Exception:  # reported by execute with a clear message
            return None

    @classmethod
    def execute(cls, sspir_weights: str, dtype: str) -> io.NodeOutput:
        import comfy.model_management as mm

        from .native_patch import load_patch

        path = host.resolve_in("sspir", sspir_weights, "sspir_weights")
        chosen = (
            torch_dtype(dtype)
            if dtype in DTYPE_NAMES
            else mm.unet_dtype(supported_dtypes=[torch.float16, torch.bfloat16, torch.float32])
        )
        return io.NodeOutput(load_patch(path, chosen))
