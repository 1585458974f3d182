"""The CUDA path checked without a GPU: full-size models as fake CUDA tensors, every op watched.

``torch._subclasses.fake_tensor.FakeTensorMode`` gives tensors a device, a dtype and a shape but no data,
so the SD1.5-size restore, one-step restore, native patch and training forward run here in seconds with
every tensor "on" ``cuda:0``. A :class:`DryRunWatch` dispatch mode sits above it and sees every aten op:

- device: any op (copies excepted) whose tensor arguments sit on two devices fails with
  :class:`DeviceMismatch`, naming the op, the devices and the stage (0-dim CPU scalars are allowed, as
  CUDA allows them);
- dtype: matmul / convolution / attention ops whose floating inputs differ in dtype fail with
  :class:`DtypeMismatch`; in an fp16/bf16 run such an op computed wholly in fp32 fails too, unless it runs
  inside :meth:`DryRunWatch.intended` (a cast the code makes on purpose, e.g. the colour fix);
- memory: live bytes of the tensors made during the run (storages counted once across views, released
  when their last tensor dies), with the peak and the stage it happened in.

What the fake mode cannot follow (values, CUDA generators, autocast, backward) is listed in
:data:`UNCHECKED` and handled by the runs in :mod:`.dry_run`, each said where it happens.
"""

from __future__ import annotations

import contextlib
import re
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..errors import SSPIRError

GIB = 2**30
MIB = 2**20
CUDA_BLOCK = 512
"""CUDA's caching allocator hands out blocks in multiples of 512 bytes, and ``max_memory_allocated`` counts
the blocks: each storage is rounded up to this when the tally stands for CUDA."""

# Ops that compute with weights: their floating inputs must share one dtype (CUDA kernels refuse mixes, and
# an fp32 operand beside fp16 weights means a tensor escaped the model's dtype).
_COMPUTE = (
    "mm",
    "addmm",
    "bmm",
    "baddbmm",
    "convolution",
    "_convolution",
    "cudnn_convolution",
    "linear",
    "scaled_dot_product_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
    "_efficient_attention_forward",
    "_flash_attention_forward",
)
# Ops that move data between devices or dtypes on purpose.
_COPIES = ("_to_copy", "copy_", "_copy_from", "_copy_from_and_resize", "to", "lift_fresh", "lift_fresh_copy", "set_")

UNCHECKED: tuple[tuple[str, str], ...] = (
    (
        "values",
        "fake tensors hold no data: NaN/overflow in fp16 and data-dependent checks (isfinite in "
        "prepare_lq) are not run; the dry run passes an LQ already at the output size",
    ),
    (
        "CUDA generators",
        "torch.Generator(device='cuda') cannot exist without CUDA: seeded_generators and the "
        "trainer's generator are stand-in CPU generators the watch treats as on the device; only "
        "the CUDA generator's own draw is unchecked (a real CPU generator drawing a CUDA tensor "
        "fails)",
    ),
    (
        "scheduler index lookups",
        "diffusers' DDPM step finds the previous timestep with nonzero() (a data-dependent "
        "shape); the dry run gives it the timestep as a Python int and the next one from "
        "a real twin scheduler; the step's tensor maths runs on the fake tensors",
    ),
    (
        "autocast",
        "torch.autocast('cuda') turns itself off without a CUDA runtime; the dry run switches CUDA "
        "autocast on directly, so its casts are followed, but its op lists are torch's, not a GPU run's",
    ),
    (
        "attention kernel",
        "SDPA on fake CUDA tensors takes its math path (fp32 upcast, the whole attention "
        "matrix); the dry run calls the memory-efficient kernel a GPU picks, and sets ComfyUI's "
        "attention to its CUDA choice (PyTorch SDPA); which fused kernel a given GPU picks is "
        "not checked",
    ),
    (
        "backward",
        "backward() needs a real device context: training memory is autograd's saved bytes plus a "
        "stated bound for backward (vram_report)",
    ),
    (
        "kernel workspaces",
        "cuDNN/cuBLAS workspaces and kernels' own scratch live inside kernels; the tally sees "
        "op outputs only (the CPU validation brackets what that leaves out)",
    ),
    (
        "ModelPatcher",
        "ComfyUI's model loading, offloading and low-VRAM partial loading around the native call "
        "are not run (Module.to on fake modules is replaced by a shape/dtype-faithful stand-in)",
    ),
)


STAND_IN_SEED = 0x5EED_C0DA
"""The seed that marks a CPU generator as standing in for a CUDA one (values do not matter to fake tensors)."""


def stand_in_generator() -> torch.Generator:
    """A CPU generator the watch treats as one on the run's device (``torch.Generator('cuda')`` needs CUDA).

    diffusers' ``randn_tensor`` draws on it and moves the noise; ``torch.randn(..., generator=g, device=...)``
    fills the device tensor directly, as a CUDA generator would.
    """
    return torch.Generator(device="cpu").manual_seed(STAND_IN_SEED)


class DryRunError(SSPIRError):
    """A device or dtype the real CUDA run would trip over (or silently compute in)."""


class DeviceMismatch(DryRunError):
    pass


class DtypeMismatch(DryRunError):
    pass


@dataclass
class Tally:
    """Live and peak bytes of the tensors made while the watch was on."""

    live: int = 0
    peak: int = 0
    peak_stage: str = ""
    by_stage: dict[str, int] = field(default_factory=dict)  # each stage's own peak
    # The peak if every convolution also held the CPU (oneDNN) scratch bound of :func:`conv_scratch_bound`:
    # an upper bound of what the CPU allocator measures, where the plain peak is a lower one.
    peak_with_scratch: int = 0


def _tensors(obj: Any) -> list[torch.Tensor]:
    return [t for t in tree_leaves(obj) if isinstance(t, torch.Tensor)]


def _device_of(t: torch.Tensor) -> torch.device | None:
    """The device that counts for mixing: None for 0-dim CPU tensors (CUDA ops take them as scalars)."""
    return None if t.device.type == "cpu" and t.dim() == 0 else t.device


class DryRunWatch(TorchDispatchMode):
    """Watches every aten op: devices, compute dtypes and live tensor bytes (see the module docstring).

    ``compute_dtype``: the dtype the models run in; in an fp16/bf16 run a matmul/conv/attention wholly in
    fp32 is an error outside :meth:`intended`. ``block``: round each storage up to this many bytes (CUDA 512;
    1 for the CPU allocator, which counts exact sizes).
    """

    def __init__(self, compute_dtype: torch.dtype, block: int = CUDA_BLOCK) -> None:
        super().__init__()
        self.compute_dtype = compute_dtype
        self.block = max(1, block)
        self.tally = Tally()
        self.stages: list[str] = []
        self.reasons: list[str] = []
        self.intended_ops: dict[str, int] = {}  # "reason: op" -> count
        self.ops_seen = 0
        self.compute_ops: dict[str, int] = {}  # op -> count, of those dtype-checked
        self._storages: dict[int, list[int]] = {}  # storage key -> [bytes, tensors alive]
        self._tracked: dict[int, int] = {}  # id(tensor) -> storage key

    # ---------------------------------------------------------------- labels

    @property
    def stage(self) -> str:
        return " > ".join(self.stages) or "(no stage)"

    @contextlib.contextmanager
    def in_stage(self, name: str) -> Iterator[None]:
        self.stages.append(name)
        try:
            yield
        finally:
            self.stages.pop()

    @contextlib.contextmanager
    def intended(self, reason: str) -> Iterator[None]:
        """fp32 compute here is by design (say why): counted under ``reason`` instead of failing."""
        self.reasons.append(reason)
        try:
            yield
        finally:
            self.reasons.pop()

    # ---------------------------------------------------------------- dispatch

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        self.ops_seen += 1
        name = func.overloadpacket.__name__
        inputs = _tensors((args, kwargs))
        if name not in _COPIES:
            self._check_devices(func, inputs)
        if name in _COMPUTE:
            self._check_dtypes(func, name, inputs)
        out = func(*args, **kwargs)
        self._check_generator(func, args, kwargs, out)
        self._track(inputs, out)
        scratch = conv_scratch_bound(inputs, _tensors(out)) if name in _CONVS else 0
        self.tally.peak_with_scratch = max(self.tally.peak_with_scratch, self.tally.live + scratch)
        return out

    def _check_devices(self, func: Any, inputs: list[torch.Tensor]) -> None:
        devices = {d for d in map(_device_of, inputs) if d is not None}
        if len(devices) > 1:
            shapes = ", ".join(f"{tuple(t.shape)} {t.dtype} on {t.device}" for t in inputs)
            raise DeviceMismatch(
                f"{func} mixes devices {' and '.join(sorted(map(str, devices)))} in stage {self.stage!r}: {shapes}"
            )

    def _check_dtypes(self, func: Any, name: str, inputs: list[torch.Tensor]) -> None:
        floats = [t for t in inputs if t.is_floating_point()]
        dtypes = {t.dtype for t in floats}
        if len(dtypes) > 1:
            shapes = ", ".join(f"{tuple(t.shape)} {t.dtype}" for t in floats)
            raise DtypeMismatch(
                f"{func} mixes dtypes {' and '.join(sorted(map(str, dtypes)))} in stage {self.stage!r}: {shapes}"
            )
        self.compute_ops[name] = self.compute_ops.get(name, 0) + 1
        if self.compute_dtype != torch.float32 and dtypes == {torch.float32}:
            if not self.reasons:
                shapes = ", ".join(f"{tuple(t.shape)}" for t in floats)
                raise DtypeMismatch(
                    f"{func} computes in torch.float32 in a {self.compute_dtype} run, in stage "
                    f"{self.stage!r} (inputs {shapes}); cast it, or mark it intended if it is"
                )
            key = f"{self.reasons[-1]}: {name}"
            self.intended_ops[key] = self.intended_ops.get(key, 0) + 1

    def _check_generator(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        """A generator draws on its own device: a CPU generator filling a CUDA tensor fails on a GPU."""
        gens = [g for g in (*args, *kwargs.values()) if isinstance(g, torch.Generator)]
        outs = _tensors(out)
        if not gens or not outs:
            return
        g = gens[0]
        if g.device.type == "cpu" and g.initial_seed() == STAND_IN_SEED:
            return  # stands in for a generator on the run's device (see stand_in_generator)
        if outs[0].device.type != g.device.type:
            raise DeviceMismatch(
                f"{func} draws a tensor on {outs[0].device} from a generator on {g.device} in stage "
                f"{self.stage!r} (CUDA needs the generator on the tensor's device)"
            )

    # ---------------------------------------------------------------- memory

    def _track(self, inputs: list[torch.Tensor], out: Any) -> None:
        known = {_storage_key(t) for t in inputs}
        for t in _tensors(out):
            if id(t) in self._tracked:
                continue
            key = _storage_key(t)
            if key in self._storages:
                self._storages[key][1] += 1
            elif key in known:  # a view of something made before the watch: not a new allocation
                continue
            else:
                size = t.untyped_storage().nbytes()
                size = -(-size // self.block) * self.block
                self._storages[key] = [size, 1]
                self._add(size)
            self._tracked[id(t)] = key
            weakref.finalize(t, self._release, id(t), key)

    def _add(self, size: int) -> None:
        tally = self.tally
        tally.live += size
        stage = self.stage
        if tally.live > tally.peak:
            tally.peak, tally.peak_stage = tally.live, stage
        tally.by_stage[stage] = max(tally.by_stage.get(stage, 0), tally.live)

    def _release(self, tensor_id: int, key: int) -> None:
        self._tracked.pop(tensor_id, None)
        entry = self._storages.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del self._storages[key]
            self.tally.live -= entry[0]

    def reset_peak(self) -> None:
        self.tally.peak, self.tally.peak_stage, self.tally.by_stage = self.tally.live, "", {}
        self.tally.peak_with_scratch = self.tally.live


_CONVS = ("convolution", "_convolution")
ONEDNN_BLOCK = 16
"""oneDNN's blocked layouts (nChw16c on AVX-512, nChw8c on AVX2) pad channels to a multiple of 16 at most."""


def conv_scratch_bound(inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> int:
    """Bytes a CPU convolution may hold inside its kernel: oneDNN reorders the input, the weight and the output
    into channel-blocked copies (channels padded to :data:`ONEDNN_BLOCK`), so at most one padded copy of each.

    The tally sees op outputs only; this is what it can miss on the CPU (derived from the layouts, not fitted).
    """
    if len(inputs) < 2 or not outputs:
        return 0

    def padded(t: torch.Tensor, dims: tuple[int, ...]) -> int:
        shape = list(t.shape)
        for d in dims:
            shape[d] = -(-shape[d] // ONEDNN_BLOCK) * ONEDNN_BLOCK
        n = 1
        for v in shape:
            n *= v
        return n * t.element_size()

    x, w, y = inputs[0], inputs[1], outputs[0]
    if x.dim() < 3 or w.dim() != x.dim():
        return 0
    return padded(x, (1,)) + padded(w, (0, 1)) + padded(y, (1,))


_MISMATCH = re.compile(
    r"should be the same|same device|same dtype|expected scalar type|Expected .* dtype|"
    r"found two different devices|device mismatch",
    re.IGNORECASE,
)


class _NameTheCall(TorchFunctionMode):
    """Mismatches that torch reports before dispatch (convolution's input/weight check): named with the call."""

    def __init__(self, watch: DryRunWatch) -> None:
        super().__init__()
        self.watch = watch

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        try:
            return func(*args, **(kwargs or {}))
        except DryRunError:
            raise
        except RuntimeError as e:
            text = str(e)
            if not _MISMATCH.search(text):
                raise
            kind = DeviceMismatch if "device" in text.lower() else DtypeMismatch
            name = getattr(func, "__qualname__", None) or getattr(func, "__name__", str(func))
            floats = [t for t in _tensors((args, kwargs)) if t.is_floating_point()]
            shapes = ", ".join(f"{tuple(t.shape)} {t.dtype} on {t.device}" for t in floats)
            raise kind(f"{name} failed in stage {self.watch.stage!r}: {text} ({shapes})") from e


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


@contextlib.contextmanager
def fake_cuda(compute_dtype: torch.dtype, device: str = "cuda", block: int = CUDA_BLOCK) -> Iterator[DryRunWatch]:
    """Fake tensors on ``device`` (modules built here land there) with a :class:`DryRunWatch` on top."""
    from unittest import mock

    from torch._subclasses.fake_tensor import FakeTensorMode

    fake = FakeTensorMode()
    watch = DryRunWatch(compute_dtype, block=block)
    with (
        fake,
        torch.device(device),
        watch,
        _NameTheCall(watch),
        mock.patch.object(torch.nn.Module, "to", _fake_module_to),
    ):
        yield watch


def _fake_module_to(self: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.nn.Module:
    """``Module.to`` for modules of fake tensors (the real one cannot swap fake parameters): floating parameters
    and buffers get the dtype, all get the device, as new fake tensors where something changes."""
    device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
    for mod in self.modules():
        for table, is_param in ((mod._parameters, True), (mod._buffers, False)):
            for name, t in list(table.items()):
                if t is None:
                    continue
                new_dtype = dtype if dtype is not None and t.is_floating_point() else t.dtype
                new_device = t.device if device is None else _indexed(device)
                if new_dtype == t.dtype and new_device == t.device:
                    continue
                value = torch.empty(t.shape, dtype=new_dtype, device=new_device)
                table[name] = torch.nn.Parameter(value, requires_grad=t.requires_grad) if is_param else value
    return self


def _indexed(device: torch.device) -> torch.device:
    return torch.device(device.type, 0) if device.type == "cuda" and device.index is None else device


def retype(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """``module.to(dtype)`` for a module built in the fake mode (see :func:`_fake_module_to`)."""
    return _fake_module_to(module, dtype=dtype)


def watched(
    watch: DryRunWatch, fn: Callable[..., Any], stage: str | None = None, intended: str | None = None
) -> Callable[..., Any]:
    """``fn`` run inside a stage label and/or an intended-fp32 reason (to wrap the code's own functions)."""

    def run(*args: Any, **kwargs: Any) -> Any:
        with contextlib.ExitStack() as stack:
            if stage is not None:
                stack.enter_context(watch.in_stage(stage))
            if intended is not None:
                stack.enter_context(watch.intended(intended))
            return fn(*args, **kwargs)

    return run
