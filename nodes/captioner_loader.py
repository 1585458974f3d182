"""SSP-IR Captioner Loader: the multimodal LLM that writes the explicit semantic prior (a caption)."""

from __future__ import annotations

from sspir_core.captioners import CAPTIONERS, PAPER_PROMPT
from sspir_core.devices import DTYPE_CHOICES, choose_device, device_choices
from sspir_core.errors import InputError
from sspir_core.restore.components import CaptionerSpec

from . import host
from .api import io
from .sockets import LOADERS, SSPIRCaptioner

NO_MODEL = "(none: openai server)"
BACKENDS = [name for name in CAPTIONERS if name != "text"]  # typed text goes straight into the caption socket


class SSPIRCaptionerLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SSPIRCaptionerLoader",
            display_name="SSP-IR Captioner Loader",
            category=LOADERS,
            description="Chooses the captioner for MLLM Caption. Local models load on first use and stay loaded; "
            "nothing is ever downloaded.",
            inputs=[
                io.Combo.Input(
                    "backend",
                    options=BACKENDS,
                    default="llava",
                    tooltip=(
                        "- llava: LLaVA-1.5 (the paper's), llava-hf layout\n"
                        "- qwen2-vl: Qwen2-VL / Qwen2.5-VL\n"
                        "- florence2, blip: small local captioners\n"
                        "- openai: any OpenAI-compatible server (Ollama, LM Studio, vLLM, llama.cpp) at 'url'"
                    ),
                ),
                io.Combo.Input(
                    "model",
                    options=[NO_MODEL, *host.llm_choices()],
                    default=NO_MODEL,
                    tooltip=(
                        "A local model folder in models/LLM (transformers layout with config.json), for every "
                        "backend except openai."
                    ),
                ),
                io.String.Input(
                    "url",
                    default="http://127.0.0.1:11434/v1",
                    tooltip=("openai backend only: the server's base URL. Only this address is contacted."),
                ),
                io.String.Input(
                    "server_model",
                    default="",
                    tooltip=(
                        "openai backend only: the model name the server knows (e.g. llava:7b); empty: the "
                        "server's default."
                    ),
                ),
                io.String.Input(
                    "prompt",
                    default="",
                    multiline=True,
                    tooltip=(
                        "The question asked about each image; empty: the backend's default (the paper's: "
                        f'"{PAPER_PROMPT}").'
                    ),
                ),
                io.Int.Input(
                    "max_new_tokens",
                    default=0,
                    min=0,
                    max=4096,
                    tooltip=("Longest caption in tokens; 0: the backend's default (512, as in the paper)."),
                ),
                # control_after_generate=False: ComfyUI's front end otherwise adds a "control after generate"
                # widget to any INT named seed, which shifts every widget value saved after it.
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=2**31 - 1,
                    control_after_generate=False,
                    tooltip=(
                        "Sampling seed: the same image, model and seed give the same caption (captions are also "
                        "cached on disk)."
                    ),
                ),
                io.Combo.Input("device", options=device_choices(), default="auto", tooltip="auto: ComfyUI's device."),
                io.Combo.Input(
                    "dtype",
                    options=list(DTYPE_CHOICES),
                    default="auto",
                    tooltip=("auto: fp16 on GPU/MPS, fp32 on the CPU."),
                ),
                io.Boolean.Input(
                    "trust_remote_code",
                    default=False,
                    tooltip=(
                        "Run Python code shipped inside the model folder (some Florence-2 copies need it). Off by "
                        "default: turn on only for folders you trust."
                    ),
                ),
                io.Boolean.Input(
                    "keep_loaded",
                    default=False,
                    tooltip=(
                        "Keep the captioner in memory after captioning. Off: it is unloaded so the restoration "
                        "gets the "
                        "memory (a 7B LLaVA holds about 14 GB); captions are cached on disk by image, so the "
                        "same image "
                        "is not captioned twice anyway."
                    ),
                ),
            ],
            outputs=[SSPIRCaptioner.Output(display_name="captioner", tooltip="The captioner (loaded on first use).")],
        )

    @classmethod
    def execute(
        cls,
        backend: str,
        model: str,
        url: str,
        server_model: str,
        prompt: str,
        max_new_tokens: int,
        seed: int,
        device: str,
        dtype: str,
        trust_remote_code: bool,
        keep_loaded: bool = False,
    ) -> io.NodeOutput:
        if backend not in BACKENDS:
            raise InputError(f"backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        model_dir = None
        if backend != "openai":
            if model == NO_MODEL:
                raise InputError(f"the {backend} captioner needs a model folder from models/LLM: pick one in 'model'")
            model_dir = host.resolve_in("LLM", model, "model")
        dev = "auto" if device == "auto" and host.device() is None else str(choose_device(device, host.device()))
        spec = CaptionerSpec(
            backend=backend,
            model_dir=model_dir,
            url=url.strip() if backend == "openai" else None,
            model_name=server_model.strip() or None,
            prompt=prompt.strip() or None,
            device=dev,
            dtype=dtype,
            seed=int(seed),
            max_new_tokens=int(max_new_tokens) or None,
            trust_remote_code=bool(trust_remote_code),
            keep_loaded=bool(keep_loaded),
        )
        spec.options()  # unknown backend or options fail here, in the loader
        return io.NodeOutput(spec)
