"""Which torch device and dtype a run uses: the one policy behind ``--device``/``--dtype`` (CLI), the loader
nodes' ``device``/``dtype`` widgets and the local captioners.

torch is imported inside the functions, so the CLI can list :data:`DTYPE_NAMES` as choices while
``sspir --help`` stays free of torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:
    import torch

DTYPE_NAMES: tuple[str, ...] = ("fp32", "fp16", "bf16")
"""The dtypes a user can name, short form first (the CLI's ``--dtype`` and the nodes' ``dtype`` choices)."""
DTYPE_CHOICES: tuple[str, ...] = ("auto", *DTYPE_NAMES)
_TORCH_NAMES = {
    "fp32": "float32",
    "float32": "float32",
    "float": "float32",
    "fp16": "float16",
    "float16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
}
"""Every accepted spelling -> the ``torch`` attribute (the captioners also took torch's own names)."""


def torch_dtype(name: str | torch.dtype, what: str = "dtype") -> torch.dtype:
    """The torch dtype for ``fp32``/``fp16``/``bf16`` (or torch's names: ``float16``, ``half``...); a dtype
    passes through. ``what`` names the setting in the error (``--dtype``, ``dtype``)."""
    import torch

    if isinstance(name, torch.dtype):
        return name
    attr = _TORCH_NAMES.get(str(name).lower())
    if attr is None:
        raise InputError(
            f"{what} {name!r} is not a dtype: use auto, {', '.join(DTYPE_NAMES[:-1])} or {DTYPE_NAMES[-1]}"
        )
    return getattr(torch, attr)


def choose_dtype(
    requested: str | torch.dtype | None, device: torch.device, bf16_supported: bool | None = None, what: str = "dtype"
) -> torch.dtype:
    """``auto`` (or None): fp16 on CUDA/MPS (SD 1.x/2.x and the paper's LLaVA run well in it), fp32 elsewhere.
    A named dtype is checked: bf16 on a CUDA GPU that lacks it is refused (``bf16_supported`` overrides the
    GPU's answer, for tests)."""
    import torch

    if requested is None or requested == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    dtype = torch_dtype(requested, what)
    if dtype is torch.bfloat16 and device.type == "cuda":
        ok = torch.cuda.is_bf16_supported() if bf16_supported is None else bf16_supported
        if not ok:
            raise InputError(f"{what} bf16 is not supported by {device}; choose fp16 or fp32")
    return dtype


def _mps_available() -> bool:
    import torch

    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def device_choices() -> list[str]:
    """``auto``, ``cpu`` and the accelerators present on this machine (the loader nodes' ``device`` widget)."""
    import torch

    out = ["auto", "cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        out.append("mps")
    return out


def choose_device(
    requested: str | torch.device | None = "auto", host: torch.device | str | None = None, what: str = "device"
) -> torch.device:
    """The device a run uses; ``what`` names the setting in errors (``--device`` on the CLI).

    ``auto`` (or None) takes ``host`` when one is given: inside ComfyUI that is ComfyUI's own device, so its
    ``--cpu``, ``--cuda-device``, DirectML or XPU choice holds for our models too and they share memory
    management with the user's other models. Without a host (CLI, library) it is the fastest device here:
    CUDA (also ROCm), then Apple MPS, then the CPU (ComfyUI picks MPS on a Mac too, so both agree there).

    A named device is checked before any work: CUDA and MPS must be available, a CUDA index must exist. Other
    types torch knows pass as they are, checked only where torch has an ``is_available`` for them (a host's
    XPU or DirectML device reaches the captioner as a name).
    """
    import torch

    if requested is None or requested == "auto":
        if host is not None:
            return torch.device(host)
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"{what} {requested!r} is not a device: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                "this torch has no CUDA/ROCm support"
                if torch.version.cuda is None and torch.version.hip is None
                else "no GPU is visible"
            )
            raise InputError(f"{what} {requested}: not available on this machine ({why}); use {what} cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"{what} {requested}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        if not _mps_available():
            raise InputError(f"{what} {requested}: Apple MPS is not available here; use {what} cpu or auto")
    elif device.type != "cpu":
        backend = getattr(torch, device.type, None)
        if callable(getattr(backend, "is_available", None)) and not backend.is_available():
            raise InputError(f"{what} {requested}: {device.type} is not available here; use {what} cpu or auto")
    return device
