"""The host's ``control`` contract, checked by running the host's own UNet forward with marker residuals.

The native route adds SSP-IR's ControlNet residuals to the ``control`` dict an LDM UNet reads
(:func:`sspir_core.native.control.merge_control`) and reads them back in its pixel attentions by skip index
(:mod:`sspir_core.native.layout`). Both rest on how ComfyUI's ``UNetModel._forward`` consumes ``control``
(``openaimodel.py``'s ``apply_control``: each list popped from its end; the skips popped deepest first). A change
there would not raise: residuals would meet the wrong skips and images would silently get worse. So the pack
runs the host's own forward once per process, on a tiny UNet built with the host's classes, with a distinct
constant in every ``control`` entry, and reads where each one landed (forward hooks on the blocks). Apply SSP-IR
refuses to run, with a clear error, if the landing differs from what the pack assumes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from sspir_core.errors import InputError

# Marker constants: entry j of list "input" is (j + 1), of "middle" 100 + (j + 1), of "output" 200 + (j + 1).
_BASES = {"input": 0.0, "middle": 100.0, "output": 200.0}
_MIDDLE_ENTRIES = 2  # more than one, so the check sees which end of the list is popped


@dataclass(frozen=True)
class ControlLanding:
    """Where each ``control`` entry landed in one forward (indices into the lists; -1: none landed).

    ``input[i]``: the ``control["input"]`` entry added to ``h`` after input block ``i``. ``middle``: the
    ``control["middle"]`` entry added after the middle block. ``skips[k]``: the input block whose output is the skip
    that output block ``k`` concatenates. ``output[k]``: the ``control["output"]`` entry added to that skip.
    """

    input: tuple[int, ...]
    middle: int
    skips: tuple[int, ...]
    output: tuple[int, ...]


def assumed_landing(blocks: int, middle_entries: int = _MIDDLE_ENTRIES) -> ControlLanding:
    """What the pack assumes for a UNet with ``blocks`` input (and output) blocks, as written in
    :mod:`sspir_core.native.control` and :mod:`sspir_core.native.layout`: lists popped from their end, output block
    ``k`` takes the skip of input block ``N - 1 - k``, and ``"output"[j]`` meets the skip of input block ``j``."""
    n = blocks
    return ControlLanding(
        input=tuple(n - 1 - i for i in range(n)),
        middle=middle_entries - 1,
        skips=tuple(n - 1 - k for k in range(n)),
        output=tuple(n - 1 - k for k in range(n)),
    )


def tiny_unet(unet_class: type | None = None, operations: Any = None) -> torch.nn.Module:
    """An SD-shaped UNet (two levels, ResBlocks, SpatialTransformers, down/upsampling) of the host's own class,
    with seeded weights (its layers are built without initialisation)."""
    if unet_class is None:
        from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel as unet_class
    if operations is None:
        import comfy.ops

        operations = comfy.ops.disable_weight_init
    unet = unet_class(
        image_size=None,
        in_channels=4,
        model_channels=32,
        out_channels=4,
        num_res_blocks=[1, 1],
        channel_mult=(1, 2),
        transformer_depth=[1, 0],
        transformer_depth_middle=1,
        transformer_depth_output=[1, 1, 0, 0],
        use_spatial_transformer=True,
        context_dim=32,
        num_head_channels=16,
        device="cpu",
        operations=operations,
    )
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.05)
    return unet.eval().requires_grad_(False)


def _constant(delta: torch.Tensor) -> float | None:
    """The value of a constant ``delta``, else None. The UNet's values are O(1) and the markers below 300, so the
    float32 round-off of ``h + marker - h`` is far below 0.01."""
    lo, hi = float(delta.min()), float(delta.max())
    return (lo + hi) / 2 if hi - lo <= 1e-2 else None


def _marker_index(value: float | None, kind: str) -> int:
    """The list index a constant difference encodes for ``kind``; -1 when it is no marker of that kind."""
    if value is None:
        return -1
    value -= _BASES[kind]
    index = round(value) - 1
    return index if abs(value - round(value)) < 1e-2 and 0 <= index < 100 else -1


def probe_landing(unet: torch.nn.Module | None = None) -> ControlLanding:
    """Run ``unet`` (default: :func:`tiny_unet`) forward with marker residuals and read where each landed."""
    unet = tiny_unet() if unet is None else unet
    ins, outs = list(unet.input_blocks), list(unet.output_blocks)
    n = len(ins)
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([500.0])
    context = torch.randn(1, 3, 32, generator=torch.Generator().manual_seed(2))
    seen: dict[str, Any] = {}
    handles = []

    def post(name: str):
        return lambda _m, _a, out: seen.__setitem__(name, out.detach().clone())

    def pre(name: str):
        return lambda _m, args: seen.__setitem__(name, args[0].detach().clone())

    # The UNet runs a block's layers one by one (forward_timestep_embed), never the block itself: a block's
    # input is its first layer's, its output its last layer's.
    def hook(block: torch.nn.Module, name: str) -> None:
        layers = list(block)
        handles.append(layers[0].register_forward_pre_hook(pre(name + "<")))
        handles.append(layers[-1].register_forward_hook(post(name)))

    for i, block in enumerate(ins):
        hook(block, f"in{i}")
    hook(unet.middle_block, "mid")
    for k, block in enumerate(outs):
        hook(block, f"out{k}")
    try:
        with torch.no_grad():
            unet(x, timesteps=t, context=context, transformer_options={})  # shapes of every entry
            shapes = {name: v.shape for name, v in seen.items()}
            control = {
                "input": [torch.full(shapes[f"in{n - 1 - j}"], _BASES["input"] + j + 1) for j in range(n)],
                "middle": [torch.full(shapes["mid"], _BASES["middle"] + j + 1) for j in range(_MIDDLE_ENTRIES)],
                "output": [torch.full(shapes[f"in{j}"], _BASES["output"] + j + 1) for j in range(n)],
            }
            seen.clear()
            unet(x, timesteps=t, context=context, control=control, transformer_options={})
    finally:
        for h in handles:
            h.remove()
    # h after input block i (control added) is what the next block receives, and the skip it pushes
    after = [seen[f"in{i + 1}<"] for i in range(n - 1)] + [seen["mid<"]]
    landed_in = [_marker_index(_constant(after[i] - seen[f"in{i}"]), "input") for i in range(n)]
    carried = seen["mid"].shape[1]
    landed_mid = _marker_index(_constant(seen["out0<"][:, :carried] - seen["mid"]), "middle")
    skips, landed_out = [], []
    for k in range(n):
        skip = seen[f"out{k}<"][:, carried:]
        # the skip is one input block's h, plus the constant of the "output" entry that landed on it (if any)
        found = [(j, _constant(skip - after[j])) for j in range(n) if after[j].shape == skip.shape]
        found = [(j, value) for j, value in found if value is not None]
        skips.append(found[0][0] if len(found) == 1 else -1)
        landed_out.append(_marker_index(found[0][1], "output") if len(found) == 1 else -1)
        carried = seen[f"out{k}"].shape[1]
    return ControlLanding(tuple(landed_in), landed_mid, tuple(skips), tuple(landed_out))


class _Marker(torch.nn.Module):
    """A parameterless layer the host must hand to the ``forward_timestep_embed_patch`` handler (as the route's
    SSPIRHook markers are); running it directly means the hook is gone."""

    def forward(self, *_: Any, **__: Any) -> Any:
        raise RuntimeError("the marker layer ran itself: forward_timestep_embed_patch did not take it")


def probe_embed_patch(unet: torch.nn.Module | None = None) -> int:
    """How many times one forward hands a marker layer in the middle block to a registered
    ``forward_timestep_embed_patch`` handler (the route's attentions run this way; the contract is 1)."""
    unet = tiny_unet() if unet is None else unet
    unet.middle_block.append(_Marker())
    calls = []

    def handler(layer: torch.nn.Module, x: torch.Tensor, *_: Any) -> torch.Tensor:
        calls.append(layer)
        return x

    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    context = torch.randn(1, 3, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        unet(
            x,
            timesteps=torch.tensor([500.0]),
            context=context,
            transformer_options={"patches": {"forward_timestep_embed_patch": [(_Marker, handler)]}},
        )
    return sum(isinstance(c, _Marker) for c in calls)


def landing_problems(got: ControlLanding, want: ControlLanding) -> list[str]:
    """What differs, in words (empty: the contract holds)."""
    out = []
    for field in ("input", "middle", "skips", "output"):
        a, b = getattr(got, field), getattr(want, field)
        if a != b:
            out.append(f"{field}: got {a}, the pack assumes {b}")
    return out


_VERDICT: list[str] | None = None  # the problems found by the first check in this process ([] = fine)


def check_control_contract(
    probe: Callable[[], ControlLanding] = probe_landing,
    embed_probe: Callable[[], int] = probe_embed_patch,
    *,
    fresh: bool = False,
) -> None:
    """Raise a clear error when this ComfyUI's UNet no longer reads ``control`` (or runs
    ``forward_timestep_embed_patch`` handlers) as the native route assumes.

    Runs the probes once per process (well under a second on a CPU once ComfyUI is imported); the verdict is
    kept. ``fresh`` re-runs them (tests).
    """
    global _VERDICT
    if _VERDICT is None or fresh:
        try:
            got = probe()
            problems = landing_problems(got, assumed_landing(len(got.input)))
            handled = embed_probe()
            if handled != 1:
                problems.append(
                    f"forward_timestep_embed_patch: a marker layer reached the handler {handled} times "
                    "per forward, the pack assumes once"
                )
            _VERDICT = problems
        except Exception as exc:  # noqa: BLE001 (a host whose UNet cannot be probed is a changed contract too)
            _VERDICT = [f"the probe itself failed ({type(exc).__name__}: {exc})"]
    if _VERDICT:
        raise InputError(
            "SSP-IR: this ComfyUI's UNet no longer runs the hooks Apply SSP-IR relies on as it assumes (ComfyUI's "
            "openaimodel.py apply_control, skip order or forward_timestep_embed changed): "
            + "; ".join(_VERDICT)
            + ". Residuals would meet the wrong skips and degrade images silently, so Apply SSP-IR stops. Use "
            "ComfyUI 0.3.75 to 0.33.0 (tested) or an update of this pack that supports your ComfyUI."
        )
