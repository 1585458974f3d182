"""`sspir demo-models` and the loader feature it relies on: weight files that carry their own small configs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from sspir_core.errors import CheckpointError
from sspir_core.weights import load_clip_vision, load_sd_components
from sspir_core.weights.bundled_configs import CLIP_VISION_CONFIG_METADATA, SD_CONFIGS_METADATA
from tests.test_base_models import TINY_VISION, _assert_same_weights, tiny_sd15, tiny_vision  # noqa: F401

# The layout the nodes/comfy contract (issue 8) and the bundled workflows name.
CONTRACT_PATHS = {
    "sd": "checkpoints/sspir-demo-sd15.safetensors",
    "sspir": "sspir/sspir-demo.safetensors",
    "clip_vision": "clip_vision/sspir-demo-clip-vision.safetensors",
}


def _configs(tiny) -> str:
    return json.dumps(
        {
            part: json.loads((tiny.config_dir / part / "config.json").read_text())
            for part in ("unet", "vae", "text_encoder")
        }
    )


def test_sd_single_file_with_configs_in_its_metadata_loads_without_a_config_dir(tiny_sd15, tmp_path):  # noqa: F811
    path = tmp_path / "carries-configs.safetensors"
    save_file(tiny_sd15.state, path, metadata={SD_CONFIGS_METADATA: _configs(tiny_sd15)})
    components = load_sd_components(path)
    assert components.base == "sd15"
    _assert_same_weights(tiny_sd15.unet, components.unet)
    _assert_same_weights(tiny_sd15.vae, components.vae)
    _assert_same_weights(tiny_sd15.text_encoder, components.text_encoder)
    assert components.scheduler_config["prediction_type"] == "epsilon"  # the base's bundled scheduler
    bad = tmp_path / "bad-metadata.safetensors"
    save_file(tiny_sd15.state, bad, metadata={SD_CONFIGS_METADATA: json.dumps({"unet": {}})})
    with pytest.raises(CheckpointError, match="lacks the vae, text_encoder config"):
        load_sd_components(bad)


def test_clip_vision_file_with_its_config_in_metadata(tiny_vision, tmp_path):  # noqa: F811
    model, root = tiny_vision
    state = {"vision_model." + k: v for k, v in model.state_dict().items()}
    save_file(state, tmp_path / "clip.safetensors", metadata={CLIP_VISION_CONFIG_METADATA: json.dumps(TINY_VISION)})
    encoder = load_clip_vision(tmp_path / "clip.safetensors")  # no config= argument
    images = torch.rand(1, 3, 30, 20)
    with torch.no_grad():
        hidden = model(pixel_values=encoder.preprocess(images), output_hidden_states=True).hidden_states[-1]
        torch.testing.assert_close(encoder(images), hidden[:, 1:], atol=0, rtol=0)


def test_demo_models_command_writes_loadable_models_in_comfyui_layout(tmp_path, capsys):
    from sspir_core.cli import main
    from sspir_core.restore.components import load_pipeline_parts
    from sspir_core.weights.checkpoint import read_compact_metadata

    assert main(["demo-models", str(tmp_path), "--no-captioner"]) == 0
    printed = capsys.readouterr().out
    for kind, rel in CONTRACT_PATHS.items():
        assert (tmp_path / rel).is_file() and str(tmp_path / rel) in printed, kind
    assert "untrained" in printed
    stamp = (tmp_path / CONTRACT_PATHS["sd"]).stat().st_mtime_ns
    assert main(["demo-models", str(tmp_path), "--no-captioner"]) == 0  # kept unless --overwrite
    assert (tmp_path / CONTRACT_PATHS["sd"]).stat().st_mtime_ns == stamp

    parts = load_pipeline_parts(tmp_path / CONTRACT_PATHS["sd"], tmp_path / CONTRACT_PATHS["sspir"])
    clip = load_clip_vision(tmp_path / CONTRACT_PATHS["clip_vision"])
    assert read_compact_metadata(tmp_path / CONTRACT_PATHS["sspir"])["base"] == "sd15"
    assert parts.text_encoder.config.hidden_size == parts.models.unet.config.cross_attention_dim
    assert clip.width == parts.models.refine.config["clip_dim"] and clip.num_tokens == 256


@pytest.mark.slow  # subprocess that builds the demo models
def test_demo_models_need_no_training_library(tmp_path):
    """A ComfyUI user has only requirements.txt's packages: writing the demo files (the one-step one included,
    whose LoRA is drawn without peft) must not import peft, and the one-step file's LoRA changes the UNet."""
    import subprocess
    import sys

    from sspir_core.restore.components import load_pipeline_parts
    from tests.conftest import REPO

    code = (
        "import sys\nsys.modules['peft'] = None  # import peft fails, as when it is not installed\n"
        "from sspir_core.cli import main\n"
        f"sys.exit(main(['demo-models', r'{tmp_path}', '--no-captioner']))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    one_step = tmp_path / "sspir" / "sspir-demo-one-step.safetensors"
    multi = load_pipeline_parts(tmp_path / CONTRACT_PATHS["sd"], tmp_path / CONTRACT_PATHS["sspir"])
    single = load_pipeline_parts(tmp_path / CONTRACT_PATHS["sd"], one_step)
    assert single.models.mode == "one-step"
    moved = [
        n for n, w in single.models.unet.state_dict().items() if not torch.equal(w, multi.models.unet.state_dict()[n])
    ]
    assert moved, "the demo one-step LoRA leaves every UNet weight as it was"


@pytest.mark.slow  # subprocess that builds the demo models
def test_demo_models_print_the_files_and_nothing_to_ignore(tmp_path):
    """Issue 27: `sspir demo-models` (run by README's first command) showed transformers' "Writing model shards"
    bar for the tiny captioner. Run as a user does (a subprocess, captioner included): stderr stays empty, stdout
    names the files and says the weights are random."""
    import subprocess
    import sys

    from tests.conftest import REPO

    out = subprocess.run(
        [sys.executable, "-m", "sspir_core.cli", "demo-models", str(tmp_path)], capture_output=True, text=True, cwd=REPO
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stderr.strip() == "", out.stderr
    assert "sspir-demo-llava" in out.stdout and "untrained" in out.stdout
