"""The native route's seams with ComfyUI's samplers, in a real ComfyUI (issue 28): which samplings Apply SSP-IR's
start "paper" changes, non-finite values, and the ControlNet range.

``start = paper`` must change only a full denoise (the official start, the LQ latent noised to t=999); img2img
(KSampler denoise < 1, KSamplerAdvanced from a later step, the later part of split sigmas) must be ComfyUI's
own. The expected value of an img2img is therefore the ``comfy`` start's image on the same graph, and the
comparison is bitwise: both graphs then run the same float operations in the same order.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.comfyui import test_native
from tests.comfyui.comfy_helpers import every_comfyui, harness
from tests.comfyui.test_native import _lq, _native, _save, _tensor

pytestmark = [pytest.mark.comfyui, every_comfyui]
native_files = test_native.native_files  # the same module-scoped fixtures: this module's own server
native_server = test_native.native_server

CFG = 7.5
# One 8-bit level. From t=751 (ddim_uniform 4) the paper's start (t=999) is another latent and moves the image by
# more. From sigma_max (t=999) it differs from ComfyUI's only in the noise's scale, sigma / sqrt(1 + sigma^2)
# against 1 (1 - 2e-3 at sigma 14.6), and from t=997 by as little: there the test asks only for a difference
# (the two graphs are otherwise the same float operations, so "no effect" would be bitwise equality).
VISIBLE = 1 / 255

# (scheduler, steps, denoise). Before the fix all but karras and exponential started these at t=999: their first
# sigma is an exact table value at t >= 501 (ddim_uniform 640, simple 799, normal 666, sgm_uniform 666).
PARTIAL = [
    ("ddim_uniform", 10, 0.7),
    ("simple", 4, 0.7),
    ("normal", 3, 0.7),
    ("sgm_uniform", 4, 0.6),
    ("karras", 4, 0.7),
    ("exponential", 4, 0.7),
]
# Full denoise: ddim_uniform 4 is the paper's leading schedule (751, 501, 251, 1); ddim_uniform 6 starts at
# t=997 below the table's top (uniform from t=1, at its top); the others start at sigma_max.
FULL = [
    ("ddim_uniform", 4),
    ("ddim_uniform", 6),
    ("simple", 3),
    ("normal", 3),
    ("karras", 3),
    ("exponential", 3),
    ("sgm_uniform", 3),
]


def _base(image: str) -> dict:
    """The native graph's loaders, text and LQ latent, and two Apply SSP-IR: start paper and start comfy."""
    prompt = _native(image, sampler="ksampler")
    for key in ("smp", "dec", "fix"):
        del prompt[key]
    prompt["apply_comfy"] = {**prompt["apply"], "inputs": {**prompt["apply"]["inputs"], "start": "comfy"}}
    return prompt


def _apply(start: str) -> list:
    return ["apply" if start == "paper" else "apply_comfy", 0]


def _ksampler(start: str, scheduler: str, steps: int, denoise: float, cfg: float = CFG) -> dict:
    return {
        "class_type": "KSampler",
        "inputs": {
            "model": _apply(start),
            "seed": 0,
            "steps": steps,
            "cfg": cfg,
            "sampler_name": "euler",
            "scheduler": scheduler,
            "positive": ["txt", 0],
            "negative": ["txt", 1],
            "latent_image": ["lat", 0],
            "denoise": denoise,
        },
    }


def _advanced(start: str, scheduler: str, steps: int, start_at: int) -> dict:
    return {
        "class_type": "KSamplerAdvanced",
        "inputs": {
            "model": _apply(start),
            "add_noise": "enable",
            "noise_seed": 0,
            "steps": steps,
            "cfg": CFG,
            "sampler_name": "euler",
            "scheduler": scheduler,
            "positive": ["txt", 0],
            "negative": ["txt", 1],
            "latent_image": ["lat", 0],
            "start_at_step": start_at,
            "end_at_step": 10000,
            "return_with_leftover_noise": "disable",
        },
    }


def _custom(prompt: dict, tag: str, start: str, steps: int, split: int | None) -> dict:
    """SamplerCustom on SSP-IR Schedule (ddpm end, euler); with ``split``, the low part of SplitSigmas."""
    prompt[f"{tag}_sched"] = {
        "class_type": "SSPIRSchedule",
        "inputs": {"model": _apply(start), "steps": steps, "end": "ddpm"},
    }
    sigmas = [f"{tag}_sched", 0]
    if split is not None:
        prompt[f"{tag}_split"] = {"class_type": "SplitSigmas", "inputs": {"sigmas": sigmas, "step": split}}
        sigmas = [f"{tag}_split", 1]
    prompt.setdefault("sel", {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}})
    return {
        "class_type": "SamplerCustom",
        "inputs": {
            "model": _apply(start),
            "add_noise": True,
            "noise_seed": 0,
            "cfg": CFG,
            "positive": ["txt", 0],
            "negative": ["txt", 1],
            "sampler": ["sel", 0],
            "sigmas": sigmas,
            "latent_image": ["lat", 0],
        },
    }


def _add(prompt: dict, names: dict, tag: str, sampler: dict) -> None:
    prompt[f"{tag}_smp"] = sampler
    prompt[f"{tag}_dec"] = {"class_type": "VAEDecode", "inputs": {"samples": [f"{tag}_smp", 0], "vae": ["ckpt", 2]}}
    names[tag] = _save(prompt, [f"{tag}_dec", 0], tag)


def test_paper_start_changes_full_denoise_only(native_server):
    """Over ComfyUI's schedulers: at partial denoise, KSamplerAdvanced from step 1 and the second part of split
    SSP-IR Schedule sigmas, start paper gives exactly start comfy's image (ComfyUI's img2img); at denoise 1 it
    differs from it (the control: the start option still acts; see VISIBLE for how much), and KSampler
    ddim_uniform 4 steps at denoise 1 equals SamplerCustom on SSP-IR Schedule 4 (the same sigmas: the paper's
    leading 751, 501, 251, 1), whose start test_native_equals_the_reference_sampler ties to the official code."""
    prompt = _base(_lq(native_server, 21, (8, 8)))
    names: dict[str, str] = {}
    for start in ("paper", "comfy"):
        for scheduler, steps, denoise in PARTIAL:
            _add(prompt, names, f"part_{scheduler}_{start}", _ksampler(start, scheduler, steps, denoise))
        for scheduler, steps in FULL:
            _add(prompt, names, f"full_{scheduler}{steps}_{start}", _ksampler(start, scheduler, steps, 1.0))
        _add(prompt, names, f"adv_{start}", _advanced(start, "ddim_uniform", 4, 1))  # from (501, 251)
        _add(prompt, names, f"split_{start}", _custom(prompt, f"split_{start}", start, 4, 1))  # (501, 251)
    _add(prompt, names, "sched4_paper", _custom(prompt, "sched4", "paper", 4, None))
    native_server.run(prompt, timeout=1800)
    out = {k: _tensor(native_server, v) for k, v in names.items()}
    assert all(torch.isfinite(t).all() and float(t.std()) > 0.01 for t in out.values())

    def diff(a: str, b: str) -> float:
        return float((out[a] - out[b]).abs().max())

    same = [f"part_{s}" for s, _, _ in PARTIAL] + ["adv", "split"]
    img2img = {k: diff(f"{k}_paper", f"{k}_comfy") for k in same}
    full = {f"{s}{n}": diff(f"full_{s}{n}_paper", f"full_{s}{n}_comfy") for s, n in FULL}
    bridge = diff("full_ddim_uniform4_paper", "sched4_paper")
    print(
        f"\nimg2img paper vs comfy: {img2img}\nfull denoise paper vs comfy: {full}\nKSampler ddim_uniform 4 vs "
        f"SSP-IR Schedule 4: {bridge:.2e}"
    )
    assert img2img == dict.fromkeys(same, 0.0), img2img
    assert all(v > 0 for v in full.values()) and full["ddim_uniform4"] > VISIBLE, full
    assert bridge == 0.0


def test_non_finite_cfg_fails_at_the_sampler_naming_cfg(native_server):
    """cfg NaN passes ComfyUI's min/max check (NaN compares false); the first guided prediction is then NaN and
    the sampler fails saying cfg is NaN, not SSP-IR Colour Fix with 'IMAGE contains NaN'."""
    prompt = _native(_lq(native_server, 22, (8, 8)), sampler="ksampler", steps=2)
    prompt["smp"]["inputs"]["cfg"] = math.nan
    _save(prompt, ["fix", 0], "nan_cfg")
    with pytest.raises(harness.ComfyUIError) as err:
        native_server.run(prompt, timeout=900)
    message = str(err.value)
    assert "(KSampler)" in message and "cfg is nan" in message and "contains NaN" in message, message
    assert "IMAGE contains" not in message
    assert native_server.alive()


def test_end_percent_below_start_percent_is_refused_at_queue_time(native_server):
    """Apply SSP-IR's end_percent < start_percent is a validation error (nothing runs) naming end_percent."""
    prompt = _native(_lq(native_server, 23, (8, 8)), steps=2)
    prompt["apply"]["inputs"].update(start_percent=0.6, end_percent=0.2)
    _save(prompt, ["fix", 0], "bad_range")
    # once, on end_percent (nodes/host.py's attach_errors_to_widgets; tests/comfyui/test_native_progress.py
    # checks it is the only error and on that input)
    with pytest.raises(
        harness.ComfyUIError,
        match=r"rejected the prompt.*node apply \(SSPIRApply\): Custom "
        r"validation failed for node: end_percent \(0\.2\) is below "
        r"start_percent \(0\.6\)",
    ):
        native_server.queue(prompt)
