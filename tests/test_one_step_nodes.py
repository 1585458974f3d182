"""ComfyUI's PGA Sampler and SSP-IR Restore nodes run a one-step checkpoint in one step (fake host, demo models).

The one-step file is `sspir demo-models`' one: the demo SSP-IR compact file plus a LoRA with non-zero B (so
it changes the output), saved by the pack's own writer; the reference is the CLI's path with
RestoreOptions(steps=1, cfg=1).
"""

from __future__ import annotations

import pytest
import torch

from sspir_core.demo import model_files as demo_models
from tests import test_nodes

host = test_nodes.host  # the fake ComfyUI host fixture, on this module's models_dir

ONE_STEP_NAME = demo_models.ONE_STEP_NAME


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    demo_models.write_demo_models(root)  # the one-step file among them
    return root


def _widgets(**changes):
    values = dict(
        negative_prompt="",
        seed=3,
        steps=0,
        cfg=0.0,
        scheduler="ddpm",
        start="lq",
        conditioning_scale=1.0,
        upscale=4.0,
        width=0,
        height=0,
        tile=96,
        tile_overlap=32,
        vae_tile=1024,
        color_fix="adain",
    )
    values.update(changes)
    return {k: [v] for k, v in values.items()}


def test_sampler_nodes_run_a_one_step_checkpoint_in_one_step(host, models_dir, caplog):
    from sspir_core.restore.components import load_pipeline_parts
    from sspir_core.restore.pipeline import RestoreOptions, RestorePipeline, restore_image
    from sspir_core.weights import load_clip_vision

    n = host.nodes
    model = (
        n["SSPIRModelLoader"]
        .execute(demo_models.SD_NAME, ONE_STEP_NAME, "auto", "auto", "auto", "auto", "in RAM")
        .args[0]
    )
    clip = n["SSPIRClipVisionLoader"].execute(demo_models.CLIP_VISION_NAME).args[0]
    image = torch.rand(1, 10, 12, 3, generator=torch.Generator().manual_seed(0))
    embed = n["SSPIRClipImageEmbed"].execute(model, clip, image, 4.0, 0, 0).args[0]
    structure, _ = n["SSPIRStructureProcessor"].execute(model, image, 4.0, 0, 0).args
    out = n["SSPIRSampler"].execute([model], [image], [embed], [structure], ["a cat"], **_widgets()).args[0]
    # the progress bar counts tiles (sspir_core.restore.work): at 40x48 px one VAE-encode tile, one latent tile a
    # step and one VAE-decode tile, the priors being given; so one step, from the checkpoint's metadata, is 3
    assert [t for v, t, _ in host.progress if v >= 1][-1] == 1 + 1 + 1

    parts = load_pipeline_parts(models_dir / "checkpoints" / demo_models.SD_NAME, models_dir / "sspir" / ONE_STEP_NAME)
    pipe = RestorePipeline(
        parts.models,
        parts.vae,
        parts.text_encoder,
        parts.tokenizer,
        load_clip_vision(models_dir / "clip_vision" / demo_models.CLIP_VISION_NAME),
        parts.scheduler_config,
    )
    expected = restore_image(pipe, image.permute(0, 3, 1, 2), "a cat", RestoreOptions(steps=1, cfg=1.0, seed=3))
    torch.testing.assert_close(out.permute(0, 3, 1, 2), expected, atol=1e-4, rtol=0)
    restored, _ = n["SSPIRRestore"].execute([model], [clip], [image], ["a cat"], **_widgets()).args
    torch.testing.assert_close(restored, out, atol=1e-4, rtol=0)

    with caplog.at_level("WARNING"):
        n["SSPIRSampler"].execute([model], [image], [embed], [structure], ["a cat"], **_widgets(steps=2))
    assert "one-step SSP-IR model" in caplog.text  # asked for 2 steps: a clear warning
