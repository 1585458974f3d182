"""SSP-IR Model Loader: picks base SD + SSP-IR weights and where to run them; loading happens on first use."""

from __future__ import annotations

from sspir_core.devices import DTYPE_CHOICES, choose_device, choose_dtype, device_choices
from sspir_core.restore.components import CACHE_CHOICES, ModelSpec
from sspir_core.restore.model_cache import file_signature
from sspir_core.weights.file_checks import check_model_files

from . import host
from .api import io
from .sockets import LOADERS, SSPIRModel
from .support import OFFLOAD_CHOICES, choose_offload


class SSPIRModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SSPIRModelLoader",
            display_name="SSP-IR Model Loader",
            category=LOADERS,
            description="Chooses the SSP-IR model. Only the files' headers are read here (a damaged or mismatched "
            "file fails on this node): the first node that runs the model loads the weights once and keeps them "
            "for the next prompts (see 'cache').",
            inputs=[
                io.Combo.Input(
                    "base_model",
                    options=host.base_model_choices(),
                    tooltip=(
                        "Stable Diffusion 1.5 or 2.1-base that SSP-IR was trained on.\n"
                        "- a single-file checkpoint from models/checkpoints (e.g. v1-5-pruned-emaonly.safetensors)\n"
                        "- or a diffusers folder from models/diffusers\n"
                        "Never downloaded: put the file there and press R."
                    ),
                ),
                io.Combo.Input(
                    "sspir_weights",
                    options=host.sspir_choices(),
                    tooltip=(
                        "SSP-IR weights from models/sspir:\n"
                        "- a compact .safetensors (only the SSP-IR parts; applied to base_model's UNet)\n"
                        "- or an official checkpoint-N/ folder from the authors' train.py (holds its own full UNet)"
                    ),
                ),
                io.Combo.Input(
                    "base",
                    options=["auto", "sd15", "sd21"],
                    default="auto",
                    tooltip=("Which SD the weights are for. auto: read from the files (an error names a mismatch)."),
                ),
                io.Combo.Input(
                    "device",
                    options=device_choices(),
                    default="auto",
                    tooltip=("Where to run. auto: ComfyUI's device (so --cpu runs on the CPU)."),
                ),
                io.Combo.Input(
                    "dtype",
                    options=list(DTYPE_CHOICES),
                    default="auto",
                    tooltip=(
                        "Precision. auto: fp32 on the CPU, fp16 on CUDA/MPS.\n"
                        "- fp16/bf16 halve memory; bf16 needs an Ampere or newer GPU\n"
                        "- fp32 on a GPU is slow but exact"
                    ),
                ),
                io.Combo.Input(
                    "offload",
                    options=list(OFFLOAD_CHOICES),
                    default="auto",
                    tooltip=(
                        "Keep models in RAM and move each stage to the GPU only while it runs (less VRAM, slower).\n"
                        "auto: on when ComfyUI runs in a low-VRAM mode (--lowvram/--novram); never on the CPU."
                    ),
                ),
                io.Combo.Input(
                    "cache",
                    options=list(CACHE_CHOICES),
                    default="in RAM",
                    tooltip=(
                        "What happens to the loaded models after a run:\n"
                        "- on device: stay on the GPU (fastest next run; other nodes get less VRAM)\n"
                        "- in RAM: move to system RAM (frees VRAM; no disk read next run)\n"
                        "- off: drop them (frees everything; the next run loads from disk)"
                    ),
                ),
            ],
            outputs=[SSPIRModel.Output(display_name="sspir_model", tooltip="The SSP-IR model (loaded on first use).")],
        )

    @classmethod
    def fingerprint_inputs(cls, base_model: str, sspir_weights: str, **_: object) -> object:
        """A replaced weights file makes downstream nodes run again."""
        try:
            return (
                file_signature(host.resolve_base_model(base_model)),
                file_signature(host.resolve_in("sspir", sspir_weights, "sspir_weights")),
            )
        except Exception:  # reported by execute with a clear message
            return None

    @classmethod
    def execute(
        cls, base_model: str, sspir_weights: str, base: str, device: str, dtype: str, offload: str, cache: str
    ) -> io.NodeOutput:
        sd = host.resolve_base_model(base_model)
        sspir = host.resolve_in("sspir", sspir_weights, "sspir_weights")
        check_model_files(sd, sspir, None if base == "auto" else base)
        dev = choose_device(device, host.device())
        spec = ModelSpec(
            sd=sd,
            sspir=sspir,
            base=None if base == "auto" else base,
            device=dev,
            dtype=choose_dtype(dtype, dev),
            offload=choose_offload(offload, host.low_vram(), dev),
            cache=cache,
        )
        return io.NodeOutput(spec)
