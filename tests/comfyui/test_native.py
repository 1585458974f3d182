"""The native route in a real ComfyUI: SSP-IR as a patch on a MODEL from Load Checkpoint, sampled by ComfyUI.

The server of this module gets the native demo models (``sspir demo-models --native``: a 320-wide SD1.5 UNet
that ComfyUI's model detection accepts, with full-size random CLIP-L text, SD VAE and CLIP ViT-L vision; made
once and cached under the harness cache) and test-only probe nodes (``native_probe.py``) that save float
images and report ComfyUI's loaded-models list and a MODEL's patches.
"""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from sspir_core.demo import native_models
from tests.comfyui.comfy_helpers import REPO, harness, load_api, put_image, unique

pytestmark = pytest.mark.comfyui

CACHE_VERSION = "1"  # bump when the native demo models change
LONG_CAPTION = ("a portrait photo of a smiling astronaut in an orange flight suit holding a white helmet, the "
                "American flag and a model of the space shuttle behind her, " * 2).strip()  # 2 chunks of 75
STEPS = 50  # the paper's schedule: 981, 961, ..., 1
# fp32 everywhere; the two routes compute the same sums in different orders (ComfyUI's UNet vs diffusers'),
# so they agree to float32 rounding amplified by 50 steps and CFG 7.5: well inside 1e-3 on [0, 1] images.
TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def native_files():
    root = harness.cache_root() / f"native-demo-{CACHE_VERSION}"
    done = root / ".complete"
    if not done.is_file():
        native_models.write_native_demo_models(root, overwrite=True)
        done.write_text("ok")
    return root


@pytest.fixture(scope="module")
def native_server(comfy_dir, demo_models, native_files, tmp_path_factory):
    models = tmp_path_factory.mktemp("native-models")
    for folder, name in native_models.NATIVE_FILES.values():
        (models / folder).mkdir(exist_ok=True)
        (models / folder / name).symlink_to(native_files / folder / name)
    (models / "LLM").symlink_to(demo_models / "LLM", target_is_directory=True)
    sd21 = models / "sspir" / "sspir-test-sd21.safetensors"
    _write_sd21_patch(sd21)
    (models / "sspir" / "sspir-test-corrupt.safetensors").write_bytes(b"not a safetensors file")
    work = tmp_path_factory.mktemp("native-work")
    probe = work / "custom_nodes" / "sspir_test_probe"
    probe.mkdir(parents=True)
    shutil.copy2(REPO / "tests" / "comfyui" / "native_probe.py", probe / "__init__.py")
    _write_lora(native_files, work / "models" / "loras" / "sspir-test-lora.safetensors")
    srv = harness.ComfyServer(work, models_dir=models, comfy_dir=comfy_dir)
    srv.input_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "examples" / "astronaut_lq.png", srv.input_dir / "astronaut_lq.png")
    srv.start()
    print(f"\nComfyUI (native) {srv.url}, log {srv.log_path}")
    yield srv
    srv.stop()


def _write_sd21_patch(path):
    """A small SSP-IR patch trained on an SD2.1-like UNet (1024-wide text context, linear projections)."""
    from sspir_core.demo.presets import TINY_UNET, tiny_models
    from sspir_core.weights.checkpoint import save_compact

    models = tiny_models(unet_config={**TINY_UNET, "cross_attention_dim": 1024, "use_linear_projection": True})
    models.base = "sd21"
    save_compact(models, path)


def _write_lora(native_files, path):
    """A LoRA (kohya key names) on every attention projection of the demo UNet's transformers."""
    from safetensors import safe_open

    path.parent.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(7)
    out = {}
    with safe_open(str(native_files / "checkpoints" / native_models.SD_NAME), framework="pt") as f:
        for key in f.keys():
            if ".transformer_blocks." in key and key.endswith(("to_q.weight", "to_k.weight", "to_v.weight")):
                w = f.get_slice(key).get_shape()
                name = "lora_unet_" + key[len("model.diffusion_model."):-len(".weight")].replace(".", "_")
                out[f"{name}.lora_up.weight"] = torch.randn(w[0], 4, generator=g) * 0.5
                out[f"{name}.lora_down.weight"] = torch.randn(4, w[1], generator=g) * 0.5
                out[f"{name}.alpha"] = torch.tensor(4.0)
    save_file(out, str(path))


# ---------------------------------------------------------------------------------------------- graphs

def _native(image: str, *, seed: int = 0, steps: int = STEPS, start: str = "paper", color_fix: str = "none",
            caption: str = LONG_CAPTION, sampler: str = "custom", strength: float = 1.0, sspir: str | None = None,
            upscale: float = 4.0) -> dict:
    """The native route in API format; ``sampler`` custom = SamplerCustom + SSP-IR Schedule (ddim) + euler."""
    p = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": native_models.SD_NAME}},
        "cv": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": native_models.CLIP_VISION_NAME}},
        "img": {"class_type": "LoadImage", "inputs": {"image": image}},
        "patch": {"class_type": "SSPIRPatchLoader", "inputs": {"sspir_weights": sspir or native_models.SSPIR_NAME,
                                                                 "dtype": "fp32"}},
        "lat": {"class_type": "SSPIRLQLatent", "inputs": {"image": ["img", 0], "vae": ["ckpt", 2], "upscale": upscale,
                                                           "width": 0, "height": 0, "vae_tile": 1024}},
        "txt": {"class_type": "SSPIRTextEncode", "inputs": {"clip": ["ckpt", 1], "caption": caption,
                                                             "negative_prompt": "", "max_chunks": 4}},
        "apply": {"class_type": "SSPIRApply", "inputs": {
            "model": ["ckpt", 0], "sspir_patch": ["patch", 0], "clip_vision": ["cv", 0], "image": ["lat", 1],
            "strength": strength, "start_percent": 0.0, "end_percent": 1.0, "start": start, "processor_tile": 1024}},
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["smp", 0], "vae": ["ckpt", 2]}},
        "fix": {"class_type": "SSPIRColorFix", "inputs": {"image": ["dec", 0], "reference": ["lat", 1],
                                                           "method": color_fix}},
    }
    if sampler == "custom":
        p["sched"] = {"class_type": "SSPIRSchedule", "inputs": {"model": ["apply", 0], "steps": steps, "end": "ddim"}}
        p["sel"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
        p["smp"] = {"class_type": "SamplerCustom", "inputs": {
            "model": ["apply", 0], "add_noise": True, "noise_seed": seed, "cfg": 7.5, "positive": ["txt", 0],
            "negative": ["txt", 1], "sampler": ["sel", 0], "sigmas": ["sched", 0], "latent_image": ["lat", 0]}}
    else:
        p["smp"] = {"class_type": "KSampler", "inputs": {
            "model": ["apply", 0], "seed": seed, "steps": steps, "cfg": 7.5, "sampler_name": "ddpm",
            "scheduler": "ddim_uniform", "positive": ["txt", 0], "negative": ["txt", 1],
            "latent_image": ["lat", 0], "denoise": 1.0}}
    return p


def _reference(image: str, *, seed: int = 0, steps: int = STEPS, color_fix: str = "none",
               caption: str = LONG_CAPTION) -> dict:
    """The existing component graph (PGA Sampler) on the same files, DDIM from the LQ latent at t=999."""
    return {
        "img": {"class_type": "LoadImage", "inputs": {"image": image}},
        "m": {"class_type": "SSPIRModelLoader", "inputs": {
            "base_model": native_models.SD_NAME, "sspir_weights": native_models.SSPIR_NAME, "base": "auto",
            "device": "auto", "dtype": "fp32", "offload": "auto", "cache": "off"}},
        "cv": {"class_type": "SSPIRClipVisionLoader", "inputs": {"clip_name": native_models.CLIP_VISION_NAME}},
        "emb": {"class_type": "SSPIRClipImageEmbed", "inputs": {"sspir_model": ["m", 0], "clip_vision": ["cv", 0],
                                                                 "image": ["img", 0], "upscale": 4.0, "width": 0,
                                                                 "height": 0}},
        "st": {"class_type": "SSPIRStructureProcessor", "inputs": {"sspir_model": ["m", 0], "image": ["img", 0],
                                                                   "upscale": 4.0, "width": 0, "height": 0}},
        "s": {"class_type": "SSPIRSampler", "inputs": {
            "sspir_model": ["m", 0], "image": ["img", 0], "image_embed": ["emb", 0], "structure": ["st", 0],
            "caption": caption, "negative_prompt": "", "seed": seed, "steps": steps, "cfg": 7.5,
            "scheduler": "ddim", "start": "lq", "conditioning_scale": 1.0, "upscale": 4.0, "width": 0, "height": 0,
            "tile": 96, "tile_overlap": 32, "vae_tile": 1024, "color_fix": color_fix}},
    }


def _save(prompt: dict, source: list, tag: str) -> str:
    name = unique(tag)
    prompt[f"save_{tag}"] = {"class_type": "SSPIRTestSaveTensor", "inputs": {"image": source, "name": name}}
    return name


def _tensor(server, name: str) -> torch.Tensor:
    return load_file(str(server.output_dir / f"{name}.safetensors"))["image"]


def _lq(server, seed: int = 0, size: tuple[int, int] = (16, 16)) -> str:
    rng = np.random.default_rng(seed)
    return put_image(server, rng.integers(0, 256, (*size, 3), dtype=np.uint8), tag="native_lq")


# ---------------------------------------------------------------------------------------------- tests

def test_native_equals_the_reference_sampler(native_server):
    """Same weights, seed and schedule: Apply SSP-IR + SamplerCustom (SSP-IR Schedule, euler = DDIM eta 0) gives
    PGA Sampler's DDIM image to 1e-3 (max abs, float, before the PNG), with and without the colour fix.

    The control: ComfyUI's own start (the latent noised to the first sigma, t=981, instead of t=999 as the
    official code) is a different image by more than the tolerance, so the comparison resolves the start.
    """
    image = _lq(native_server, 1)
    prompt = _native(image)
    names = {"native": _save(prompt, ["fix", 0], "native")}
    ref = _reference(image)
    ref = {f"r_{k}": {**v, "inputs": {ik: [f"r_{iv[0]}", iv[1]] if isinstance(iv, list) else iv
                                      for ik, iv in v["inputs"].items()}} for k, v in ref.items()}
    prompt.update(ref)
    names["reference"] = _save(prompt, ["r_s", 0], "reference")
    comfy_start = _native(image, start="comfy")
    comfy_start = {f"c_{k}": {**v, "inputs": {ik: [f"c_{iv[0]}", iv[1]] if isinstance(iv, list) else iv
                                              for ik, iv in v["inputs"].items()}} for k, v in comfy_start.items()}
    prompt.update(comfy_start)
    names["comfy_start"] = _save(prompt, ["c_fix", 0], "comfy_start")
    native_server.run(prompt, timeout=900)
    out = {k: _tensor(native_server, v) for k, v in names.items()}
    assert out["native"].shape == out["reference"].shape == (1, 64, 64, 3)
    # the image is not flat or saturated (a comparison of clamped constants could not fail)
    ref_img = out["reference"]
    assert float(ref_img.std()) > 0.01 and float(((ref_img > 0.001) & (ref_img < 0.999)).float().mean()) > 0.5
    diff = float((out["native"] - ref_img).abs().max())
    assert diff < TOLERANCE, f"native vs reference: max abs {diff:.2e}"
    control = float((out["comfy_start"] - ref_img).abs().max())
    assert control > TOLERANCE, f"ComfyUI's own start should differ from the paper's: max abs {control:.2e}"
    print(f"\nnative vs reference max abs {diff:.2e}; ComfyUI start vs reference {control:.2e}")
