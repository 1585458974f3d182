"""Which models the native route takes, in a real ComfyUI: one-step SSP-IR weights, and base models it refuses.

The server gets the native demo set (with its one-step file, ``sspir-native-demo-one-step.safetensors``), the
tiny demo set (for the reference route's base check), and test-only files: the one-step file with its LoRA
zeroed (the control of the one-step comparison), an SDXL-shaped and an SD2.1-768-shaped (v-prediction)
diffusion model, written with zero weights: ComfyUI detects both from shapes alone (and, for SD2.x, the
spread of one norm bias), and the refusals come before any sampling, so their values never matter.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sspir_core.demo import model_files, native_models
from sspir_core.models.one_step import alpha_bar
from tests.comfyui import test_native
from tests.comfyui.comfy_helpers import REPO, harness, link_native_models
from tests.comfyui.test_native import LONG_CAPTION, _lq, _native, _prefixed, _reference, _save, _tensor

pytestmark = pytest.mark.comfyui
native_files = test_native.native_files  # the shared cached native demo set (a module-scoped fixture)

EPS32 = torch.finfo(torch.float32).eps
NO_LORA = "sspir-test-one-step-no-lora.safetensors"
OFFICIAL = "checkpoint-1"  # the one-step file in the official folder layout (lora/ + one_step.json)
SDXL_UNET = "sspir-test-sdxl-unet.safetensors"
SD21V_UNET = "sspir-test-sd21-768-v-unet.safetensors"
# diffusers configs whose LDM form ComfyUI 0.3.75 detects as SDXL (supported_models.SDXL: model_channels 320,
# transformer_depth [0, 0, 2, 2, 10, 10], context_dim 2048, adm_in_channels 2816) and SD2.x (SD20: context 1024,
# linear projections, no adm); channel_mult is not part of either, so every level is 320 wide (small files).
SDXL_CONFIG = {
    "block_out_channels": [320, 320, 320],
    "layers_per_block": 2,
    "transformer_layers_per_block": [1, 2, 10],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "attention_head_dim": [5, 5, 5],
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "norm_num_groups": 32,
    "sample_size": 128,
}
SD21_CONFIG = {
    "block_out_channels": [320, 320, 320, 320],
    "layers_per_block": 2,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 1024,
    "use_linear_projection": True,
    "attention_head_dim": [5, 5, 5, 5],
    "norm_num_groups": 32,
    "sample_size": 96,
}


def _write_unet_only(config: dict, path, extra: dict[str, str] | None = None, spread: tuple[str, ...] = ()) -> None:
    """A diffusion-model-only LDM file (what UNETLoader reads) of this diffusers config, fp16 zeros; the keys in
    ``spread`` get values of std 1 (ComfyUI's SD2.x v-prediction test reads the std of one norm bias)."""
    from sspir_core.demo.presets import empty_weights
    from sspir_core.models.build import stock_unet_from_config
    from sspir_core.weights.ldm_layout import UNET_PREFIX, unet_key_to_ldm

    with empty_weights():
        unet = stock_unet_from_config(config)
    g = torch.Generator().manual_seed(0)
    out = {}
    for key, value in unet.state_dict().items():
        module = key.rpartition(".")[0]
        name = (extra or {}).get(module)
        name = f"{name}.{key.rpartition('.')[2]}" if name else unet_key_to_ldm(key, config).removeprefix(UNET_PREFIX)
        out[name] = (torch.randn(value.shape, generator=g) if name in spread else torch.zeros(value.shape)).half()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path))


def _write_without_lora(src, dst) -> None:
    """The one-step file with every LoRA B zeroed: the same checkpoint, its LoRA left off."""
    with safe_open(str(src), framework="pt") as f:
        state, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    for k in state:
        if k.startswith("lora.") and ".lora_B." in k:
            state[k] = torch.zeros_like(state[k])
    save_file(state, str(dst), meta)


def _write_official(native_files, out) -> None:
    """The one-step file as an official checkpoint-N/ folder, on the demo SD UNet (what train.py writes)."""
    from sspir_core.weights.checkpoint import compact_to_official
    from sspir_core.weights.stable_diffusion import load_sd_components

    sd = load_sd_components(native_files / "checkpoints" / native_models.SD_NAME, parts=("unet",))
    compact_to_official(native_files / "sspir" / native_models.ONE_STEP_NAME, sd.unet, out)
    assert (out / "one_step.json").is_file() and (out / "lora" / "unet_lora.safetensors").is_file()


@pytest.fixture(scope="module")
def server(comfy_dir, demo_models, native_files, tmp_path_factory):
    models = link_native_models(tmp_path_factory.mktemp("native-models"), native_files)
    tiny_sd = model_files.DEMO_FILES["sd"][1]
    (models / "checkpoints" / tiny_sd).symlink_to(demo_models / "checkpoints" / tiny_sd)
    (models / "LLM").symlink_to(demo_models / "LLM", target_is_directory=True)  # the workflow's MLLM Caption
    _write_without_lora(native_files / "sspir" / native_models.ONE_STEP_NAME, models / "sspir" / NO_LORA)
    _write_official(native_files, models / "sspir" / OFFICIAL)
    work = tmp_path_factory.mktemp("native-models-work")
    probe = work / "custom_nodes" / "sspir_test_probe"
    probe.mkdir(parents=True)
    shutil.copy2(REPO / "tests" / "comfyui" / "native_probe.py", probe / "__init__.py")
    unets = work / "models" / "diffusion_models"
    _write_unet_only(
        SDXL_CONFIG,
        unets / SDXL_UNET,
        extra={"add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"},
    )
    _write_unet_only(SD21_CONFIG, unets / SD21V_UNET, spread=("output_blocks.11.1.transformer_blocks.0.norm1.bias",))
    srv = harness.ComfyServer(work, models_dir=models, comfy_dir=comfy_dir)
    srv.input_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "examples" / "astronaut_lq.png", srv.input_dir / "astronaut_lq.png")
    srv.start()
    print(f"\nComfyUI (native models) {srv.url}, log {srv.log_path}")
    yield srv
    srv.stop()


# ---------------------------------------------------------------------------------------------- one-step


def _native_one_step(image: str, sspir: str, scheduler: str = "simple") -> dict:
    """Apply SSP-IR with the one-step file, then plain KSampler: 1 step, cfg 1, euler (sigma_999 -> 0)."""
    p = _native(image, sspir=sspir, sampler="ksampler")
    p["smp"]["inputs"].update({"steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": scheduler})
    return p


def _depth(native_files) -> int:
    """Linear/conv layers (2-D and 4-D weights, from the headers) on the path to the image: SD UNet, SSP-IR
    attentions, ControlNet with the Processor, Refine layer and the VAE decoder."""
    count = 0
    with safe_open(str(native_files / "checkpoints" / native_models.SD_NAME), framework="pt") as f:
        for k in f.keys():
            if k.startswith(("model.diffusion_model.", "first_stage_model.decoder.", "first_stage_model.post_quant")):
                count += k.endswith(".weight") and len(f.get_slice(k).get_shape()) in (2, 4)
    with safe_open(str(native_files / "sspir" / native_models.ONE_STEP_NAME), framework="pt") as f:
        for k in f.keys():
            if not k.startswith("lora."):
                count += k.endswith(".weight") and len(f.get_slice(k).get_shape()) in (2, 4)
    return count


def test_native_one_step_equals_the_reference_one_step(server, native_files):
    """The one-step file (compact, and as an official checkpoint-N/ folder) through Patch Loader + Apply SSP-IR +
    KSampler (1 step, cfg 1, euler; scheduler simple, normal or karras) gives PGA Sampler's one-step image (steps 0 /
    cfg 0: the checkpoint's own 1 step, no CFG; its LoRA merged).

    Bound: both routes compute the same network in fp32 with sums in other orders (ComfyUI's UNet and LoRA
    arithmetic vs diffusers' and the reference merge); each of the L linear/conv layers on the path adds a
    relative rounding of a few eps32 on activations of order 1 (16 eps32 per layer, as in the library's one-step
    test), and the x0 formula multiplies the UNet output's error by sqrt(1 - a)/sqrt(a) < 1/sqrt(a_999) ~ 14.6:
    ``16 L eps32 / sqrt(a_999)``. Control: the same file with its LoRA zeroed differs by more than that.
    """
    image = _lq(server, 4, (8, 8))
    prompt = _native_one_step(image, native_models.ONE_STEP_NAME)
    names = {"native": _save(prompt, ["dec", 0], "one_step")}
    ref = _reference(image)
    ref["m"]["inputs"]["sspir_weights"] = native_models.ONE_STEP_NAME
    ref["s"]["inputs"].update({"steps": 0, "cfg": 0.0, "caption": LONG_CAPTION})
    prompt.update(_prefixed(ref, "r_"))
    names["reference"] = _save(prompt, ["r_s", 0], "reference")
    prompt.update(_prefixed(_native_one_step(image, OFFICIAL), "o_"))  # the same weights, official folder
    names["official"] = _save(prompt, ["o_dec", 0], "official")
    for scheduler in ("normal", "karras"):  # their one sigma is sigma_999 up to rounding: the same step
        prompt.update(_prefixed(_native_one_step(image, native_models.ONE_STEP_NAME, scheduler), f"{scheduler}_"))
        names[scheduler] = _save(prompt, [f"{scheduler}_dec", 0], scheduler)
    wrong = _prefixed(_native_one_step(image, native_models.ONE_STEP_NAME, "ddim_uniform"), "w_")  # t=1
    _save(wrong, ["w_dec", 0], "wrong_sigma")
    prompt.update(wrong)
    prompt.update(_prefixed(_native_one_step(image, NO_LORA), "c_"))
    names["no_lora"] = _save(prompt, ["c_dec", 0], "no_lora")
    server.run(prompt, timeout=900)
    out = {k: _tensor(server, v) for k, v in names.items()}
    ref = out["reference"]
    assert out["native"].shape == ref.shape == (1, 32, 32, 3)
    assert float(ref.std()) > 0.01 and float(((ref > 0.001) & (ref < 0.999)).float().mean()) > 0.5
    depth = _depth(native_files)
    bound = 16 * depth * EPS32 / alpha_bar(None) ** 0.5
    diff = float((out["native"] - ref).abs().max())
    control = float((out["no_lora"] - ref).abs().max())
    print(f"\none-step native vs reference max abs {diff:.2e}, bound {bound:.2e} (L={depth}); LoRA off {control:.2e}")
    print({k: f"{float((out[k] - ref).abs().max()):.2e}" for k in ("official", "normal", "karras")})
    assert diff <= bound
    assert control > bound
    others = {k: float((out[k] - ref).abs().max()) for k in ("official", "normal", "karras")}
    assert all(v <= bound for v in others.values()), others
    log = server.log_path.read_text(errors="replace")  # ddim_uniform's one sigma is t=1's: warned, not silent
    assert "SSP-IR: one-step weights (trained at t=999 only), but this sampling starts at sigma 0.04" in log


def test_bundled_native_one_step_workflow_runs(server):
    """example_workflows/api/sspir_native_one_step.json as shipped (MLLM Caption, KSampler 1 step)."""
    import numpy as np
    from PIL import Image

    from tests.comfyui.comfy_helpers import load_api

    prompt = load_api("sspir_native_one_step.json")
    save = next(k for k, v in prompt.items() if v["class_type"] == "SaveImage")
    name = _save(prompt, prompt[save]["inputs"]["images"], "workflow")
    server.run(prompt, timeout=600)
    out = _tensor(server, name)
    h, w = np.asarray(Image.open(REPO / "examples" / "astronaut_lq.png")).shape[:2]
    assert out.shape == (1, 4 * h, 4 * w, 3) and torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------- base models


@pytest.mark.parametrize(
    "case, match",
    [
        (
            "sd21_768_v",
            r"\(SSPIRApply\) failed: .*trained on SD1\.5 with epsilon prediction, but this MODEL \(SD2\.x\) "
            r"uses v-prediction",
        ),
        ("v_prediction_node", r"\(SSPIRApply\) failed: .*but this MODEL \(SD1\.5\) uses v-prediction"),
        ("sdxl", r"\(SSPIRApply\) failed: .*trained on SD1\.5, but this MODEL is SDXL: adm_in_channels=2816"),
    ],
)
def test_apply_refuses_a_model_it_was_not_trained_on(server, case, match):
    """Models ComfyUI loads and detects itself (Load Diffusion Model on a zero-weight SD2.1-768-v / SDXL file, or
    ModelSamplingDiscrete v_prediction on the SD1.5 demo) stop at Apply SSP-IR, before the priors and sampling,
    with a node error naming the patch's base and the MODEL's."""
    image = _lq(server, 5, (8, 8))
    prompt = _native(image, steps=1)
    if case == "v_prediction_node":
        prompt["unet"] = {
            "class_type": "ModelSamplingDiscrete",
            "inputs": {"model": ["ckpt", 0], "sampling": "v_prediction", "zsnr": False},
        }
    else:
        prompt["unet"] = {
            "class_type": "UNETLoader",
            "inputs": {"unet_name": SD21V_UNET if case != "sdxl" else SDXL_UNET, "weight_dtype": "default"},
        }
    prompt["apply"]["inputs"]["model"] = ["unet", 0]
    _save(prompt, ["fix", 0], case)
    with pytest.raises(harness.ComfyUIError, match=match):
        server.run(prompt, timeout=600)
    assert server.alive()


def test_model_loader_refuses_sspir_weights_of_another_unet_shape(server):
    """SSP-IR Model Loader (reference route) with the 320-wide native SSP-IR file on the tiny demo SD file
    (width 24): refused at the loader from the two headers, naming both files, not later in Structure Processor."""
    image = _lq(server, 6, (8, 8))
    ref = _reference(image)
    ref["m"]["inputs"]["base_model"] = model_files.DEMO_FILES["sd"][1]
    _save(ref, ["s", 0], "shape_mismatch")
    match = (
        r"node m \(SSPIRModelLoader\) failed: .*sspir-native-demo\.safetensors was trained on SD1\.5 \(UNet "
        r"width 320, text context 768\), but base_model sspir-demo-sd15\.safetensors is SD1\.5 with a UNet of "
        r"another shape \(UNet width 24"
    )
    with pytest.raises(harness.ComfyUIError, match=match):
        server.run(ref, timeout=600)
