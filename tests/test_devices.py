"""The one device/dtype policy (sspir_core.devices) and the one options-for-a-mode function, shared by the CLI,
the nodes and the captioners."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sspir_core.devices import DTYPE_NAMES, choose_device, choose_dtype, device_choices, torch_dtype
from sspir_core.errors import InputError, OptionError
from sspir_core.restore.options import RestoreOptions, options_for_mode

REPO = Path(__file__).resolve().parents[1]


def _machine(monkeypatch, cuda: int, mps: bool) -> None:
    """Pretend this machine has ``cuda`` CUDA devices and (or not) Apple MPS."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


# ------------------------------------------------------------------ dtypes


@pytest.mark.parametrize(
    "name, expected",
    [
        ("fp32", torch.float32),
        ("float32", torch.float32),
        ("float", torch.float32),
        ("FP32", torch.float32),
        ("fp16", torch.float16),
        ("float16", torch.float16),
        ("half", torch.float16),
        ("bf16", torch.bfloat16),
        ("bfloat16", torch.bfloat16),
    ],
)
def test_every_spelling_names_its_torch_dtype(name, expected):
    assert torch_dtype(name) is expected


def test_short_names_are_the_choices_and_a_dtype_passes_through():
    assert DTYPE_NAMES == ("fp32", "fp16", "bf16")
    assert torch_dtype(torch.bfloat16) is torch.bfloat16
    with pytest.raises(InputError, match="--dtype 'fp8' is not a dtype: use auto, fp32, fp16 or bf16"):
        torch_dtype("fp8", "--dtype")


def test_auto_dtype_is_half_on_accelerators_and_full_on_the_cpu():
    assert choose_dtype("auto", torch.device("cpu")) is torch.float32
    assert choose_dtype(None, torch.device("cuda")) is torch.float16
    assert choose_dtype("auto", torch.device("mps")) is torch.float16
    assert choose_dtype("fp16", torch.device("cpu")) is torch.float16  # a named one is taken as named
    assert choose_dtype("bf16", torch.device("cuda"), bf16_supported=True) is torch.bfloat16
    with pytest.raises(InputError, match="dtype bf16 is not supported by cuda"):
        choose_dtype("bf16", torch.device("cuda"), bf16_supported=False)


# ------------------------------------------------------------------ devices


@pytest.mark.parametrize(
    "cuda, mps, expected", [(1, True, "cuda"), (2, False, "cuda"), (0, True, "mps"), (0, False, "cpu")]
)
def test_auto_without_a_host_is_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    _machine(monkeypatch, cuda, mps)
    assert choose_device("auto") == torch.device(expected)
    assert choose_device(None) == torch.device(expected)


def test_auto_with_a_host_takes_the_hosts_device(monkeypatch):
    _machine(monkeypatch, 1, True)
    assert choose_device("auto", torch.device("cpu")) == torch.device("cpu")  # ComfyUI --cpu wins over CUDA
    assert choose_device("auto", "cuda:0") == torch.device("cuda:0")
    assert choose_device("cpu", torch.device("cuda")) == torch.device("cpu")  # a named device wins over the host


def test_named_devices_are_checked_against_this_machine(monkeypatch):
    _machine(monkeypatch, 2, False)
    assert choose_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(InputError, match="--device cuda:2: this machine has 2 CUDA device"):
        choose_device("cuda:2", what="--device")
    with pytest.raises(InputError, match="--device mps: Apple MPS is not available here; use --device cpu or auto"):
        choose_device("mps", what="--device")
    with pytest.raises(InputError, match="device 'gpu0' is not a device"):
        choose_device("gpu0")
    _machine(monkeypatch, 0, True)
    assert choose_device("mps") == torch.device("mps")
    with pytest.raises(InputError, match="device cuda: not available on this machine"):
        choose_device("cuda")


def test_the_device_widget_lists_what_is_here(monkeypatch):
    _machine(monkeypatch, 2, True)
    assert device_choices() == ["auto", "cpu", "cuda:0", "cuda:1", "mps"]
    _machine(monkeypatch, 0, False)
    assert device_choices() == ["auto", "cpu"]


# ------------------------------------------------------------------ options for a checkpoint's mode


def test_each_mode_gets_its_own_steps_and_cfg():
    # the paper's sampler (50 DDPM steps, cfg 7.5); a one-step model runs 1 step without guidance
    paper = options_for_mode("multi-step")
    assert (paper.steps, paper.cfg) == (50, 7.5)
    one = options_for_mode("one-step")
    assert (one.steps, one.cfg) == (1, 1.0)
    assert (
        options_for_mode("one-step", 4, 3.0, warn=lambda w: None).steps,
        options_for_mode("multi-step", 20, 5.0).cfg,
    ) == (4, 5.0)


def test_a_step_count_the_mode_was_not_trained_for_warns_before_the_options_are_checked():
    said: list[str] = []
    with pytest.raises(OptionError) as err:
        options_for_mode("one-step", 4, warn=said.append, source="--sspir x.safetensors", scheduler="nope")
    assert err.value.option == "scheduler"
    assert len(said) == 1 and "--sspir x.safetensors is a one-step SSP-IR model" in said[0]
    said.clear()
    options_for_mode("multi-step", 1, warn=said.append)
    assert len(said) == 1 and "1 step runs one DDPM step" in said[0]
    said.clear()
    options_for_mode("one-step", warn=said.append)
    options_for_mode("multi-step", warn=said.append)
    assert said == []


def test_zero_tiles_mean_never_tile_and_other_fields_pass_through():
    o = options_for_mode("multi-step", tile=0, vae_tile=0, tile_overlap=8, seed=3, color_fix="wavelet")
    assert (o.tile, o.vae_tile, o.tile_overlap, o.seed, o.color_fix) == (None, None, 8, 3, "wavelet")
    o = options_for_mode("multi-step", tile=64, vae_tile=512)
    assert (o.tile, o.vae_tile) == (64, 512)


def test_the_cli_defaults_are_the_libraries_defaults():
    """`sspir restore` with no sampling flags asks for exactly RestoreOptions() (the paper's settings)."""
    from sspir_core.cli import build_parser
    from sspir_core.cli.restore import _options

    args = build_parser().parse_args(["restore", "in.png", "-o", "out"])
    assert _options(args) == RestoreOptions()


def test_building_the_cli_imports_no_torch():
    """The CLI's choices and defaults come from torch-free registries, so `sspir --help` stays light."""
    code = (
        "import sys\nfrom sspir_core.cli import build_parser\nbuild_parser()\n"
        "assert 'torch' not in sys.modules, 'torch imported'\nprint('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
