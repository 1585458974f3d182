"""One-step SSP-IR (`sspir train --mode one-step`, after OSEDiff) with the tiny-random preset on real photos.

- the one-step clean latent is diffusers' DDPM step from t = 999 with one timestep (what OSEDiff calls);
- LPIPS equals pyiqa's implementation for the same (random) weights, and a missing file names itself;
- the loss falls and its logged parts add up (whether training restores: tests/test_learning.py);
- train -> checkpoint -> restore (CLI, folder and compact file) gives the training step's own prediction;
- resume is exact, as for the 50-step trainer.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sspir_core.cli import main as cli_main
from sspir_core.errors import InputError
from sspir_core.models.one_step import (
    ONE_STEP,
    ONE_STEP_TIMESTEP,
    count_layers,
    one_step_sigma,
)
from sspir_core.restore.one_step import OneStepScheduler, resolve_sampling
from sspir_core.training import TrainConfig, Trainer
from sspir_core.training.lpips import LIN_FILES, VGG_CONVS, VGG_FILE, load_lpips
from sspir_core.weights.checkpoint import read_compact_metadata, read_state_dict
from tests import test_training

PHOTOS = test_training.PHOTOS
photos, pairs = test_training.photos, test_training.pairs  # the 50-step trainer's fixtures: 4 photos, 64 px pairs

pytestmark = pytest.mark.usefixtures("one_thread")
EPS32 = torch.finfo(torch.float32).eps


def stand_in_lpips(folder: Path, widths=(4, 4, 6, 6, 8, 8, 8, 8, 8, 8, 8, 8, 8), seed: int = 0) -> Path:
    """Random VGG-layout weights (torchvision key names, small widths) and LPIPS linear layers in the hub layout."""
    g = torch.Generator().manual_seed(seed)
    vgg, cin = {}, 3
    for i, c in zip(VGG_CONVS, widths):
        vgg[f"features.{i}.weight"] = torch.randn(c, cin, 3, 3, generator=g) / (3 * cin**0.5)
        vgg[f"features.{i}.bias"] = torch.randn(c, generator=g) * 0.01
        cin = c
    outs = [widths[1], widths[3], widths[6], widths[9], widths[12]]
    lins = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for k, c in enumerate(outs)}
    (folder / VGG_FILE).parent.mkdir(parents=True, exist_ok=True)
    (folder / LIN_FILES[0]).parent.mkdir(parents=True, exist_ok=True)
    torch.save(vgg, folder / VGG_FILE)
    torch.save(lins, folder / LIN_FILES[0])
    return folder


def _cfg(out: Path, data: Path, lpips: Path | None, **kw) -> TrainConfig:
    base = dict(
        output=str(out),
        data=[str(data)],
        preset="tiny-random",
        resolution=64,
        batch_size=2,
        grad_accum=1,
        max_steps=4,
        mixed_precision="no",
        checkpoint_every=1000,
        validate_every=1000,
        report_to="none",
        num_workers=0,
        log_every=1000,
        mode="one-step",
        lpips_weights=str(lpips) if lpips else None,
    )
    base.update(kw)
    return TrainConfig(**base)


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- formulas


def test_one_step_x0_is_ddpm_single_step_from_999():
    """OSEDiff's ``noise_scheduler.set_timesteps(1); step(eps, 999, z).prev_sample`` (cswry/OSEDiff osediff.py)."""
    from diffusers import DDPMScheduler

    from sspir_core.restore.schedulers import SD_SCHEDULE

    g = torch.Generator().manual_seed(0)
    z, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    ddpm = DDPMScheduler.from_config(SD_SCHEDULE)
    # OSEDiff's diffusers took t - 1000 // 1 = -1 as the previous timestep; today's looks it up in the list
    ddpm.set_timesteps(timesteps=[ONE_STEP_TIMESTEP])
    expected = ddpm.step(eps, ONE_STEP_TIMESTEP, z).prev_sample  # prev alpha 1: x0 (plus a 1e-10 std noise)
    mine = OneStepScheduler(None)
    assert mine.timesteps.tolist() == [999]
    got = mine.step(eps, 999, z).prev_sample
    assert torch.allclose(got, expected, rtol=0, atol=1e-4 * float(expected.abs().max()))
    t, sigma = one_step_sigma()
    abar = float(ddpm.alphas_cumprod[999])
    assert t == 999 and sigma == pytest.approx(((1 - abar) / abar) ** 0.5, rel=1e-6)


def test_step_count_mismatch_warns_and_defaults_follow_the_mode():
    assert resolve_sampling(ONE_STEP, None, None)[:2] == (1, 1.0)
    assert resolve_sampling("multi-step", None, None) == (50, 7.5, None)
    assert resolve_sampling(ONE_STEP, 1, 3.0) == (1, 3.0, None)  # CFG when asked
    assert "one-step" in resolve_sampling(ONE_STEP, 50, None, "x")[2]
    assert "50-step" in resolve_sampling("multi-step", 1, None, "x")[2]


def test_lpips_equals_pyiqa_for_the_same_weights(tmp_path, monkeypatch):
    lpips_arch = pytest.importorskip("pyiqa.archs.lpips_arch")
    import torchvision

    # pyiqa asks torchvision for the ImageNet VGG (a download); a random one of the same architecture instead
    vgg16 = torchvision.models.vgg16
    monkeypatch.setattr(lpips_arch.models, "vgg16", lambda **kw: vgg16(weights=None))
    ref = lpips_arch.LPIPS(net="vgg", version="0.1", pretrained=False, pnet_rand=True).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for lin in ref.lins:
            lin.model[-1].weight.copy_(torch.rand(lin.model[-1].weight.shape, generator=g))
    state = ref.state_dict()
    vgg = {}
    for k, v in state.items():  # pyiqa keeps torchvision's feature indices inside its slices
        if k.startswith("net.slice"):
            vgg["features." + k.split(".", 2)[2]] = v
    (tmp_path / VGG_FILE).parent.mkdir(parents=True)
    (tmp_path / LIN_FILES[0]).parent.mkdir(parents=True)
    torch.save(vgg, tmp_path / VGG_FILE)
    torch.save({k: v for k, v in state.items() if k.startswith("lin")}, tmp_path / LIN_FILES[0])
    mine = load_lpips(tmp_path)
    a, b = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    with torch.no_grad():
        expected = ref(a, b, normalize=True).flatten()
        got = mine(2 * a - 1, 2 * b - 1)
    depth = count_layers([mine])
    assert torch.allclose(got, expected, rtol=16 * depth * EPS32, atol=0), (got, expected)
    assert torch.equal(mine(a, a), torch.zeros(2))


def test_missing_lpips_file_names_it_and_the_flag(tmp_path, pairs):
    with pytest.raises(InputError, match=r"vgg16-397923af\.pth.*--lambda-lpips 0"):
        Trainer(_cfg(tmp_path / "run", pairs, tmp_path / "empty"), log=lambda m: None)


# ---------------------------------------------------------------- training


@pytest.mark.slow  # a one-step training run
def test_loss_falls_and_its_parts_add_up(pairs, tmp_path):
    """20 steps on 4 degraded crops (pixel MSE + the Processor losses): the logged total is the sum of its parts
    and falls. Whether training restores anything is tests/test_learning.py's question (true vs shuffled pairs on
    held-out crops, margins from the spread between seeds)."""
    cfg = _cfg(
        tmp_path / "run",
        pairs,
        None,
        max_steps=20,
        lr=2e-3,
        caption_dropout=0.0,
        lambda_lpips=0.0,
        lambda_vsd=0.0,
        lambda_vsd_lora=0.0,
    )
    Trainer(cfg, log=lambda m: None).train()
    rows = _metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(1, 21))
    for r in rows:  # the total is the sum of its parts
        parts = sum(r[k] for k in ("loss_mse", "loss_lpips", "loss_vsd", "loss_vsd_lora", "loss_rgb", "loss_fft"))
        assert r["loss"] == pytest.approx(parts, rel=1e-5)
    first, last = np.mean([r["loss"] for r in rows[:5]]), np.mean([r["loss"] for r in rows[-5:]])
    assert last < first, (first, last)


@pytest.fixture(scope="module")
def trained(pairs, tmp_path_factory):
    """Two one-step steps with every loss on (LPIPS through the random stand-in), saved at step 2."""
    root = tmp_path_factory.mktemp("one-step")
    lpips = stand_in_lpips(root / "lpips")
    cfg = _cfg(
        root / "run", pairs, lpips, max_steps=2, lr=1e-3, checkpoint_every=2, validate_every=2, validation_count=2
    )
    trainer = Trainer(cfg, log=lambda m: None)
    trainer.train()
    return trainer, root / "run" / "checkpoint-2"


def test_checkpoint_says_one_step_in_both_layouts(trained):
    _, ckpt = trained
    meta = json.loads((ckpt / "one_step.json").read_text())
    assert meta["mode"] == ONE_STEP and meta["timestep"] == 999 and meta["lora"]["rank"] == 4
    compact = read_compact_metadata(ckpt / "sspir.safetensors")
    assert compact["mode"] == ONE_STEP and json.loads(compact["one_step"]) == meta
    lora = read_state_dict(ckpt / "lora" / "unet_lora.safetensors")
    assert lora and {k for k in read_state_dict(ckpt / "sspir.safetensors") if k.startswith("lora.")} == {
        f"lora.{k}" for k in lora
    }
    assert any(float(v.abs().max()) > 0 for k, v in lora.items() if ".lora_B." in k)  # B starts at 0: it trained
    unet = read_state_dict(ckpt / "unet" / "diffusion_pytorch_model.safetensors")
    assert not any("lora" in k or "base_layer" in k for k in unet)  # the official layout stays loadable as is
    assert (ckpt / "vsd" / "fake_score_lora.safetensors").is_file()
    assert Image.open(ckpt.parent / "validation" / "step-0000002.png").size == (2 * 64, 3 * 64)


def test_restore_gives_the_training_steps_own_prediction(trained, pairs, tmp_path, capsys):
    """CLI (folder, no --steps: one step from the metadata) and the compact file against ``OneStepModule.predict``.

    The restore merges the LoRA into the weights, so the two differ by float32 rounding: per layer about eps of
    the layer's output, over the layers of ControlNet + UNet + VAE decoder, times 1/sqrt(abar_999) (~14.6) from x0.
    """
    from sspir_core.demo.presets import tiny_random_pipeline
    from sspir_core.image_io import load_image
    from sspir_core.models.one_step import alpha_bar
    from sspir_core.restore.pipeline import RestoreOptions, RestorePipeline
    from sspir_core.restore.prompt import encode_prompt_pair
    from sspir_core.weights.checkpoint import load_sspir_weights, stock_unet_from_official

    trainer, ckpt = trained
    pipe = trainer.pipe
    lq_file = pairs / "sr_bicubic" / "chelsea.png"
    lq = load_image(lq_file).rgb
    trainer.module.eval()
    with torch.no_grad():
        z = pipe.vae_encode(lq, [torch.Generator().manual_seed(0)], None)
        text, _ = encode_prompt_pair(pipe.text_encoder, pipe.tokenizer, [""], "", 4)
        x0, _ = trainer.module.predict(z, text, pipe.clip_vision(lq), lq)
        expected = pipe.vae_decode(x0, None)
    depth = count_layers([trainer.models.unet, trainer.models.controlnet, pipe.vae.decoder])
    tol = 16 * depth * EPS32 / alpha_bar(None) ** 0.5

    # the compact file holds no SD weights: its SD UNet comes from the folder, as a user's comes from their SD file
    compact = load_sspir_weights(ckpt / "sspir.safetensors", sd_unet=stock_unet_from_official(ckpt))
    for restored in (
        tiny_random_pipeline(ckpt),
        RestorePipeline(compact, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.clip_vision),
    ):
        assert restored.models.mode == ONE_STEP and restored.models.lora is None  # merged for inference
        with torch.no_grad():
            got = restored.restore(lq, "", RestoreOptions(steps=1, cfg=1.0, color_fix="none", tile=None, vae_tile=None))
        assert float((got - expected).abs().max()) <= tol, (float((got - expected).abs().max()), tol)

    args = [
        "restore",
        str(lq_file),
        "-o",
        str(tmp_path / "out"),
        "--preset",
        "tiny-random",
        "--sspir",
        str(ckpt),
        "--upscale",
        "1",
        "--device",
        "cpu",
        "--color-fix",
        "none",
        "--tile",
        "0",
        "--vae-tile",
        "0",
    ]
    assert cli_main(args) == 0
    assert "warning" not in capsys.readouterr().err
    png = np.asarray(Image.open(tmp_path / "out" / "chelsea.png")).astype(int)
    want = (expected[0].permute(1, 2, 0).numpy() * 255).round().astype(int)
    assert np.abs(png - want).max() <= 1  # 8-bit rounding of values within tol

    assert cli_main([*args[:3], str(tmp_path / "out50"), *args[4:], "--steps", "3"]) == 0
    assert "one-step SSP-IR model" in capsys.readouterr().err  # asked for 3 steps: a clear warning


@pytest.mark.slow  # two training runs
def test_resume_reproduces_the_uninterrupted_run(pairs, tmp_path):
    lpips = stand_in_lpips(tmp_path / "lpips")
    full = _cfg(tmp_path / "full", pairs, lpips, checkpoint_every=2)
    Trainer(full, log=lambda m: None).train()
    part = replace(full, output=str(tmp_path / "cut"))
    Trainer(part, log=lambda m: None).train(stop_after=2)
    Trainer(replace(part, resume="latest"), log=lambda m: None).train()

    a, b = _metrics(tmp_path / "full"), _metrics(tmp_path / "cut")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert all(r["loss_vsd_lora"] > 0 and r["loss_lpips"] > 0 for r in a)  # every loss ran
    for sub in (
        "unet/diffusion_pytorch_model.safetensors",
        "controlnet/diffusion_pytorch_model.safetensors",
        "lora/unet_lora.safetensors",
        "vsd/fake_score_lora.safetensors",
        "sspir.safetensors",
    ):
        sa = read_state_dict(tmp_path / "full" / "checkpoint-4" / sub)
        sb = read_state_dict(tmp_path / "cut" / "checkpoint-4" / sub)
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), sub


def test_bench_part_times_one_step_against_50_steps_on_the_same_pipeline():
    """The one-step run evaluates the denoiser on 1 latent row, the 2-step CFG run on 2 x 2 (counted, not timed)."""
    from sspir_core.bench.one_step import bench_one_step, one_step_lines
    from sspir_core.bench.settings import BenchSettings, build_bench_pipeline

    settings = BenchSettings(config="tiny", device="cpu", size=64, image_steps=2, repeats=1)
    pipe = build_bench_pipeline("tiny")
    rows: list[int] = []
    hook = pipe.models.unet.register_forward_pre_hook(lambda m, args: rows.append(args[2].shape[0]))
    try:
        r = bench_one_step(settings, pipe)
    finally:
        hook.remove()
    assert rows == [1, 1, 2, 2]  # one-step: warm-up + timed run; then 2 steps with CFG (negative + caption)
    assert r["denoiser_evals"] == [1, 4] and r["ratio"] == r["multi_step_s"] / r["one_step_s"]
    assert pipe.models.mode == "multi-step"  # put back
    assert "ratio" in one_step_lines(r)[-1]
