"""The CUDA dry run: full-size SD1.5 routes on fake CUDA tensors, its device/dtype checks, and its memory tally.

Expected numbers come from hand computation (tensor sizes) or the CPU allocator's own measurement, never
from the tally itself.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from sspir_core.bench import dry_run
from sspir_core.bench.fake_cuda import DeviceMismatch, DtypeMismatch, fake_cuda
from sspir_core.restore import pipeline as P


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fake tensors' data_ptr deprecation (kv_cache compares storages)
        yield


# ------------------------------------------------------------------------------------------ the tally


def test_tally_counts_storages_once_and_frees_them():
    """Hand-computed: 1 MiB + 2 MiB live, a view adds nothing, freeing the first leaves 2 MiB; peak 3 MiB."""
    with fake_cuda(torch.float16, block=1) as watch:
        base = watch.tally.live
        a = torch.empty(256, 1024, dtype=torch.float32)  # 1 MiB
        b = torch.empty(1024, 1024, dtype=torch.float16)  # 2 MiB
        v = b[:10].t()  # a view: same storage
        assert watch.tally.live - base == 3 * 2**20
        del a
        assert watch.tally.live - base == 2 * 2**20
        del b  # the view still holds the storage
        assert watch.tally.live - base == 2 * 2**20
        del v
        assert watch.tally.live - base == 0
        assert watch.tally.peak - base == 3 * 2**20


def test_tally_rounds_to_cuda_blocks():
    """CUDA's allocator counts 512-byte blocks: a 3-element fp16 tensor (6 bytes) costs 512."""
    with fake_cuda(torch.float16) as watch:
        base = watch.tally.live
        x = torch.empty(3, dtype=torch.float16)
        assert watch.tally.live - base == 512
        del x


# ------------------------------------------------------------------------------------------ the checks


def test_device_mismatch_names_op_and_devices():
    with (
        fake_cuda(torch.float16),
        pytest.raises(
            DeviceMismatch,
            match=r"aten\.add\.Tensor mixes devices cpu and "
            r"cuda:0",
        ),
    ):
        torch.ones(4, dtype=torch.float16) + torch.ones(4, dtype=torch.float16, device="cpu")


def test_cpu_scalars_pass_as_on_cuda():
    with fake_cuda(torch.float16):
        torch.ones(4, dtype=torch.float16) * torch.tensor(2.0, device="cpu")  # CUDA takes 0-dim CPU tensors


def test_fp32_compute_in_half_run_fails_unless_intended():
    with fake_cuda(torch.float16) as watch:
        x = torch.ones(4, 4)
        with pytest.raises(DtypeMismatch, match=r"aten\.mm\.default computes in torch\.float32"):
            x @ x
        with watch.intended("on purpose"):
            x @ x
        assert watch.intended_ops == {"on purpose: mm": 1}
        with pytest.raises(DtypeMismatch, match=r"aten\.mm\.default mixes dtypes torch\.float16 and torch\.float32"):
            x.half() @ x


# ------------------------------------------------------------------------------------------ full size


@pytest.mark.slow  # full-size SD1.5 on fake tensors
def test_restore_sd15_fp16_full_route():
    """Priors, tiled encode, 2 CFG steps over two latent tiles, tiled decode, wavelet colour fix, float output."""
    r = dry_run.restore_dry_run(torch.float16, "sd15", size=(512, 768))
    # 2 steps x 2 tiles x (ControlNet + UNet): the SD1.5 UNet has 16 transformer blocks, the ControlNet 7 (its
    # encoder + mid); each block runs self- and cross-attention (2 SDPA calls) -> 2*2*(16+7)*2 = 184 at least
    assert r.compute_ops["_scaled_dot_product_efficient_attention"] >= 184
    assert any(k.startswith(dry_run.COLOR_FIX_FP32) for k in r.intended_fp32)
    assert set(r.by_stage) >= {
        "encode_text",
        "encode_image",
        "structure_prior",
        "vae_encode",
        "denoise",
        "vae_decode",
        "colour fix",
    }


@pytest.mark.slow  # full-size SD1.5 on fake tensors
def test_one_step_sd15_bf16_streamed_output():
    r = dry_run.restore_dry_run(torch.bfloat16, "sd15", size=(512, 768), one_step=True, output_bits=8)
    assert "decode_to_integers" in r.by_stage and "denoise" in r.by_stage


# ------------------------------------------------------------------------------------------ injected faults


@pytest.mark.slow  # a full-size dry run
def test_cpu_tensor_in_the_denoise_loop_fails_naming_op(monkeypatch):
    """A CPU tensor added to the blended noise prediction inside the loop: the failure names the op and devices."""
    blend = P.blend_tiles

    def misplaced(*args, **kwargs):
        eps = blend(*args, **kwargs)
        return eps + torch.zeros(eps.shape, dtype=eps.dtype, device="cpu")

    monkeypatch.setattr(P, "blend_tiles", misplaced)
    with pytest.raises(DeviceMismatch, match=r"aten\.add\.Tensor mixes devices cpu and cuda:0 in stage 'denoise'"):
        dry_run.restore_dry_run(torch.float16, "tiny", size=(512, 768))


@pytest.mark.slow  # a 512x768 dry run
def test_fp32_residual_beside_fp16_unet_fails_naming_op(monkeypatch):
    """ControlNet residuals left in fp32: the UNet's next convolution meets fp32 activations and fp16 weights."""
    from sspir_core.models.controlnet import SSPIRControlNet

    forward = SSPIRControlNet.forward

    def fp32_residuals(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        return out._replace(down_residuals=[r.float() for r in out.down_residuals])

    monkeypatch.setattr(SSPIRControlNet, "forward", fp32_residuals)
    # conv2d checks its input against its weight before dispatch: the message is torch's, named with the call
    with pytest.raises(
        DtypeMismatch,
        match=r"conv2d failed in stage 'denoise': Input type \(float\) and bias type "
        r"\(c10::Half\) should be the same",
    ):
        dry_run.restore_dry_run(torch.float16, "tiny", size=(512, 768))


def test_cpu_generator_drawing_a_cuda_tensor_fails():
    """Real CUDA refuses torch.randn(generator=<cpu>, device='cuda'); fake tensors do not, the watch does."""
    from sspir_core.bench.fake_cuda import stand_in_generator

    with fake_cuda(torch.float16):
        with pytest.raises(
            DeviceMismatch,
            match=r"aten\.randn\.generator draws a tensor on cuda:0 from a generator "
            r"on cpu",
        ):
            torch.randn(3, generator=torch.Generator().manual_seed(0))
        torch.randn(3, generator=stand_in_generator())  # stands in for a CUDA generator
        torch.randn(3, generator=torch.Generator().manual_seed(0), device="cpu")  # a CPU draw on the CPU


# ------------------------------------------------------------------------------------------ memory vs the CPU


@pytest.mark.slow  # a real CPU restore beside the tally
def test_tally_brackets_the_cpu_allocator_measurement():
    """The same one-step restore, real on the CPU (allocator peak, as `sspir bench --parts memory` measures)
    and fake on the CPU: the tally counts op outputs only, so it is a lower bound; adding to each convolution
    the oneDNN scratch bound (padded copies of input, weight and output) gives an upper bound."""
    kw = dict(size=(128, 192), tile=16, tile_overlap=4, vae_tile=128, one_step=True)
    measured = dry_run.measured_cpu_restore("tiny-medium", **kw)
    r = dry_run.restore_dry_run(torch.float32, "tiny-medium", device="cpu", block=1, **kw)
    assert r.peak_bytes <= measured <= r.extra["peak_with_scratch_bytes"], (r.peak_bytes, measured, r.extra)


def test_saved_tensors_of_a_small_mlp_by_hand():
    """Linear -> ReLU -> Linear on a [256, 1024] fp32 input: autograd keeps the input (1 MiB, for the first
    weight's grad) and the ReLU output (1 MiB, for the ReLU and the second weight's grad, one storage); the
    weights are excluded: 2 MiB."""
    with fake_cuda(torch.float32, block=1):
        net = torch.nn.Sequential(torch.nn.Linear(1024, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 1024))
        weights = {p.untyped_storage()._cdata for p in net.parameters()}
        x = torch.empty(256, 1024)
        saved = dry_run.SavedTensors(weights, block=1)
        with saved.hooks():
            net(x).sum()
    assert saved.bytes == 2 * 2**20


@pytest.mark.slow  # full-size dry runs, twice
def test_repeated_tiles_shortcut_keeps_the_peak():
    """The 2048 px estimate runs the denoiser once per tile shape; at two tiles the peak equals the full run's."""
    kw = dict(size=(512, 768), steps=1, output_bits=8)
    full = dry_run.restore_dry_run(torch.float16, "tiny", **kw)
    short = dry_run.restore_dry_run(torch.float16, "tiny", repeat_tiles=True, **kw)
    assert short.ops < full.ops  # the second tile's ControlNet + UNet did not run
    assert short.peak_bytes == full.peak_bytes


def test_largest_batch_by_hand():
    """24 GiB card, 1 GiB reserve, 5 GiB fixed, 3 GiB per item: (24 - 1 - 5) / 3 = 6 items."""
    assert dry_run.largest_batch(5 * 2**30, 3 * 2**30, 24) == 6
    assert dry_run.largest_batch(23 * 2**30, 2**30, 24) == 0


# ------------------------------------------------------------------------------------------ training


@pytest.mark.slow  # full-size SD1.5 on fake tensors
def test_training_forward_multi_step_sd15_bf16():
    r = dry_run.training_dry_run(torch.bfloat16, "sd15", size=512, mode="multi-step")
    assert r.extra["saved_bytes"] > 0 and r.compute_ops["convolution"] > 0


@pytest.mark.slow  # full-size SD1.5 on fake tensors
def test_training_forward_one_step_with_vsd_fp16():
    """The one-step micro-step: LoRA, VSD (real and fake score), fake-score loss, Processor losses (tiny config:
    the same code; the full size runs in `python -m sspir_core.bench.dry_run`)."""
    r = dry_run.training_dry_run(torch.float16, "tiny", size=128, mode="one-step", vsd=True)
    assert r.extra["saved_bytes"] > 0


# ------------------------------------------------------------------------------------------ native route


def _comfyui_tree():
    """The ComfyUI tree native_dry_run imports (the harness's default: its requirements are in this venv)."""
    from sspir_core.host import comfyui_dir

    tree = comfyui_dir()
    return tree if (tree / "comfy").is_dir() else None


@pytest.mark.skipif(_comfyui_tree() is None, reason="no ComfyUI tree (bash scripts/setup.sh --comfyui)")
@pytest.mark.slow  # full-size SD1.5 in a ComfyUI subprocess
def test_native_patched_model_call_sd15_bf16():
    """In a child process: real ComfyUI modules in this one would shadow the node tests' stand-ins."""
    import json
    import subprocess
    import sys

    code = (
        "import json, torch, warnings; warnings.simplefilter('ignore')\n"
        "from sspir_core.bench.dry_run import native_dry_run\n"
        "r = native_dry_run(torch.bfloat16, 'sd15', size=(512, 768))\n"
        "print(json.dumps({'ops': r.compute_ops, 'stages': r.by_stage, 'seconds': r.seconds}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["seconds"] < 60
    # two tiles x (UNet 16 transformer blocks x 2 attentions + ControlNet 7 x 2 + SSP-IR's image and pixel
    # attentions) -> at least 2 * (32 + 14) = 92 fused attention calls
    assert r["ops"]["_scaled_dot_product_efficient_attention"] >= 92
    assert set(r["stages"]) >= {"priors", "patched model call"}


def test_bench_part_registered_and_its_lines():
    """`sspir bench --parts cuda-dry-run` finds the part; its report prints the batches per card."""
    from sspir_core.bench.settings import EXTRA_PARTS

    assert EXTRA_PARTS["cuda-dry-run"] == (dry_run.bench_cuda_dry_run, dry_run.vram_lines)
    gib = 2**30
    r = {
        "reserve_gib": 1.0,
        "native": None,
        "training": [],
        "restore": [
            {
                "dtype": "float16",
                "what": "512 -> 512 px",
                "weights": 4 * gib,
                "peak": gib,
                "peak_stage": "denoise",
                "per_image": gib,
                "fits": {24: 19, 40: 35, 80: 75},
            }
        ],
    }
    text = "\n".join(dry_run.vram_lines(r))
    assert "weights 4.00 GiB + peak 1.00 GiB (in denoise) = 5.00 GiB" in text and "24/40/80 GiB: 19/35/75" in text
