"""The output-size widgets shared by the sampler, the restore node and the two prior nodes."""

from __future__ import annotations

from .api import io

SIZE_NOTE = (
    "SSP-IR computes its priors on the LQ image upscaled to the output size, so they depend on it. This node "
    "computes the prior at its own upscale/width/height and keeps the image: the sampler reuses it when its output "
    "size is the same, and otherwise recomputes it at its size (one more pass). Either way the result equals the "
    "all-in-one node's; keep the sizes equal to compute only once."
)


def size_inputs() -> list:
    return [
        io.Float.Input(
            "upscale",
            default=4.0,
            min=0.01,
            max=16.0,
            step=0.05,
            tooltip=("Output size = input size x this (the paper restores x4). Ignored when width and height are set."),
        ),
        io.Int.Input(
            "width",
            default=0,
            min=0,
            max=16384,
            step=8,
            tooltip=("Exact output width in pixels; 0 (with height 0): use upscale. Set both or neither."),
        ),
        io.Int.Input(
            "height",
            default=0,
            min=0,
            max=16384,
            step=8,
            tooltip=("Exact output height in pixels; 0 (with width 0): use upscale. Set both or neither."),
        ),
    ]
