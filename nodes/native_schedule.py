"""SSP-IR Schedule: the paper's DDPM timesteps ("leading", offset 1) as SIGMAS for SamplerCustom."""

from __future__ import annotations

from sspir_core.restore.options import MAX_STEPS

from .api import io
from .sockets import NATIVE


class SSPIRSchedule(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SSPIRSchedule",
            display_name="SSP-IR Schedule",
            category=NATIVE,
            description="The sigmas of the official sampling timesteps (981, 961, ..., 1 for 50 steps) for "
            "SamplerCustom / SamplerCustomAdvanced. With Apply SSP-IR's start 'paper' the first step sees the LQ "
            "latent noised to t=999, as the official code.",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL to sample (its own sigma table is used)."),
                io.Int.Input("steps", default=50, min=1, max=MAX_STEPS, tooltip="Denoising steps (paper: 50)."),
                io.Combo.Input(
                    "end",
                    options=["ddpm", "ddim"],
                    default="ddpm",
                    tooltip=(
                        "- ddpm: end at sigma 0 (diffusers' DDPM; use ComfyUI's ddpm sampler)\n- ddim: end at "
                        "alphas_cumprod[0] as diffusers' DDIM for SD (use the euler or ddim sampler: DDIM with "
                        "eta 0 is "
                        "the Euler method on these sigmas)"
                    ),
                ),
            ],
            outputs=[io.Sigmas.Output(display_name="sigmas", tooltip="For SamplerCustom's sigmas input.")],
        )

    @classmethod
    def execute(cls, model, steps: int, end: str) -> io.NodeOutput:
        from sspir_core.native.schedule import schedule_sigmas

        table = model.get_model_object("model_sampling").sigmas
        return io.NodeOutput(schedule_sigmas(table, int(steps), end))
