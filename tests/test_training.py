"""`sspir train` end to end with the tiny-random preset on real photos (scikit-image ships them).

- the loss falls within 60 steps;
- a run interrupted after a checkpoint and resumed reproduces the uninterrupted run exactly;
- two CPU processes (accelerate launch, gloo) see disjoint samples and write one consistent checkpoint;
- `sspir restore --preset tiny-random --sspir OUTPUT/checkpoint-N` restores with exactly what was trained.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sspir_core.cli import main as cli_main
from sspir_core.training import TrainConfig, Trainer
from sspir_core.weights.checkpoint import load_official_checkpoint, read_compact_metadata, read_state_dict
from tests.conftest import import_bitsandbytes

pytestmark = pytest.mark.usefixtures("one_thread")


REPO = Path(__file__).resolve().parents[1]
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    skdata = pytest.importorskip("skimage.data", reason="scikit-image ships the test photos (pip install .[test])")
    folder = tmp_path_factory.mktemp("photos")
    for name in PHOTOS:
        Image.fromarray(getattr(skdata, name)()).convert("RGB").resize((96, 96), Image.BICUBIC).save(
            folder / f"{name}.png"
        )
    return folder


@pytest.fixture(scope="module")
def pairs(photos, tmp_path_factory) -> Path:
    """The official layout written by `sspir make-pairs` (64 px crops, Real-ESRGAN x4 degradation)."""
    out = tmp_path_factory.mktemp("pairs")
    assert cli_main(["make-pairs", str(photos), str(out), "--crop", "64", "--seed", "0"]) == 0
    return out


def _cfg(out: Path, data: Path, **kw) -> TrainConfig:
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
    )
    base.update(kw)
    return TrainConfig(**base)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_make_pairs_writes_the_official_layout(pairs, photos):
    for sub, ext in (("gt", ".png"), ("sr_bicubic", ".png"), ("gt_llm_caption", ".txt")):
        assert sorted(p.stem for p in (pairs / sub).iterdir() if p.suffix == ext) == sorted(PHOTOS)
    gt = np.asarray(Image.open(pairs / "gt" / "coffee.png"))
    lq = np.asarray(Image.open(pairs / "sr_bicubic" / "coffee.png"))
    assert gt.shape == lq.shape == (64, 64, 3)
    assert np.abs(gt.astype(float) - lq).mean() > 2  # degraded, not a copy


@pytest.mark.slow  # a 60-step training run
def test_loss_falls_in_60_steps(pairs, tmp_path):
    cfg = _cfg(tmp_path / "run", pairs, max_steps=60, lr=1e-3, caption_dropout=0.0)
    Trainer(cfg, log=lambda m: None).train()
    rows = _metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(1, 61))
    assert all({"loss", "loss_mse", "loss_rgb", "loss_fft", "lr"} <= r.keys() for r in rows)
    for r in rows:  # the total is the sum of its parts
        assert r["loss"] == pytest.approx(r["loss_mse"] + r["loss_rgb"] + r["loss_fft"], rel=1e-5)
    first = np.mean([r["loss"] for r in rows[:10]])
    last = np.mean([r["loss"] for r in rows[-10:]])
    assert last < 0.8 * first, (first, last)
    rgb_first, rgb_last = np.mean([r["loss_rgb"] for r in rows[:10]]), np.mean([r["loss_rgb"] for r in rows[-10:]])
    assert rgb_last < rgb_first  # the Processor learns to predict the GT colours
    assert (tmp_path / "run" / "checkpoint-60" / "unet" / "diffusion_pytorch_model.safetensors").is_file()


@pytest.mark.slow  # two training runs
def test_resume_reproduces_the_uninterrupted_run(pairs, tmp_path):
    full = _cfg(tmp_path / "full", pairs, checkpoint_every=2, checkpoints_total_limit=1)
    Trainer(full, log=lambda m: None).train()
    assert sorted(p.name for p in (tmp_path / "full").glob("checkpoint-*")) == ["checkpoint-4"]  # the limit

    part = replace(full, output=str(tmp_path / "cut"), checkpoints_total_limit=None)
    Trainer(part, log=lambda m: None).train(stop_after=2)  # "killed" after the step-2 checkpoint
    assert not (tmp_path / "cut" / "checkpoint-4").exists()
    Trainer(replace(part, resume="latest"), log=lambda m: None).train()

    a, b = _metrics(tmp_path / "full"), _metrics(tmp_path / "cut")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    for sub in ("unet", "controlnet"):
        sa = read_state_dict(tmp_path / "full" / "checkpoint-4" / sub / "diffusion_pytorch_model.safetensors")
        sb = read_state_dict(tmp_path / "cut" / "checkpoint-4" / sub / "diffusion_pytorch_model.safetensors")
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), sub
    ra = torch.load(tmp_path / "full" / "checkpoint-4" / "refine" / "refine.pt", weights_only=True)
    rb = torch.load(tmp_path / "cut" / "checkpoint-4" / "refine" / "refine.pt", weights_only=True)
    assert all(torch.equal(ra[k], rb[k]) for k in ra)


@pytest.mark.slow  # a training run, then a restore
def test_checkpoint_layout_and_restore_with_what_was_trained(pairs, tmp_path):
    from sspir_core.image_io import load_image
    from sspir_core.restore.pipeline import RestoreOptions, restore_image

    out = tmp_path / "run"
    trainer = Trainer(
        _cfg(
            out,
            pairs,
            max_steps=2,
            lr=1e-3,
            checkpoint_every=2,
            validate_every=2,
            validation_count=2,
            validation_steps=2,
        ),
        log=lambda m: None,
    )
    trainer.train()
    ckpt = out / "checkpoint-2"
    # official layout, each part its own class (the official final save overwrites the ControlNet with the UNet)
    assert json.loads((ckpt / "unet" / "config.json").read_text())["_class_name"] == "UNet2DConditionModel"
    assert json.loads((ckpt / "controlnet" / "config.json").read_text())["_class_name"] == "ControlNetModel"
    assert (ckpt / "refine" / "refine.pt").is_file()
    assert read_compact_metadata(ckpt / "sspir.safetensors")["format"] == "sspir-compact"
    grid = Image.open(out / "validation" / "step-0000002.png")
    assert grid.size == (2 * 64, 3 * 64)  # columns: images; rows: LQ, restored, GT

    loaded = load_official_checkpoint(ckpt)
    for name, module in trainer.models.named_modules_():
        mine = module.state_dict()
        assert all(torch.equal(mine[k], v) for k, v in getattr(loaded, name).state_dict().items()), name

    lq_file = tmp_path / "lq.png"
    Image.fromarray(np.asarray(Image.open(pairs / "sr_bicubic" / "chelsea.png").resize((16, 16)))).save(lq_file)
    args = [
        "restore",
        str(lq_file),
        "-o",
        str(tmp_path / "restored"),
        "--preset",
        "tiny-random",
        "--sspir",
        str(ckpt),
        "--steps",
        "3",
        "--upscale",
        "4",
        "--device",
        "cpu",
    ]
    assert cli_main(args) == 0
    got = np.asarray(Image.open(tmp_path / "restored" / "lq.png"))

    trainer.models.eval()
    expected = restore_image(trainer.pipe, load_image(lq_file).rgb, "", RestoreOptions(steps=3), upscale=4)
    expected = (expected[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert np.abs(got.astype(int) - expected).max() <= 1  # same trained weights and the same frozen parts

    untrained = restore_image(
        __import__("sspir_core.demo.presets", fromlist=["x"]).tiny_random_pipeline(),
        load_image(lq_file).rgb,
        "",
        RestoreOptions(steps=3),
        upscale=4,
    )
    assert np.abs(got.astype(float) - untrained[0].permute(1, 2, 0).numpy() * 255).mean() > 0.5


@pytest.mark.slow  # two training processes
def test_two_cpu_processes_shard_data_and_save_one_consistent_checkpoint(pairs, tmp_path):
    out = tmp_path / "ddp"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    # accelerate's own `--cpu --num_processes 2` starts ONE process unless mpirun is set up; its torchrun launcher
    # (--multi_gpu) with the trainer's --cpu gives two CPU processes on gloo.
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        "-m",
        "sspir_core.cli",
        "train",
        "--cpu",
        "--preset",
        "tiny-random",
        "--data",
        str(pairs),
        "--output",
        str(out),
        "--resolution",
        "64",
        "--batch-size",
        "1",
        "--grad-accum",
        "1",
        "--max-steps",
        "4",
        "--lr",
        "1e-3",
        "--mixed-precision",
        "no",
        "--checkpoint-every",
        "4",
        "--validate-every",
        "1000",
        "--report-to",
        "none",
        "--num-workers",
        "0",
        "--trace-samples",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]

    traces = {}
    for rank in (0, 1):
        lines = [json.loads(x) for x in (out / "samples" / f"rank-{rank}.jsonl").read_text().splitlines()]
        traces[rank] = lines
    seen = {r: [rec["images"][0] for rec in traces[r] if "images" in rec] for r in (0, 1)}
    assert len(seen[0]) == len(seen[1]) == 4
    for step in range(4):
        assert seen[0][step] != seen[1][step]  # different samples at the same step
    first_epoch = seen[0][:2] + seen[1][:2]  # positions 0..3: one pass over the 4 photos
    assert sorted(first_epoch) == sorted(f"{p}.png" for p in PHOTOS)

    finals = [next(rec for rec in traces[r] if "weights_checksum" in rec) for r in (0, 1)]
    assert all(f["world_size"] == 2 and f["backend"] == "gloo" for f in finals)
    sums = [f["weights_checksum"] for f in finals]
    assert sums[0] == sums[1]  # replicas identical after 4 synchronised steps
    ckpt = out / "checkpoint-4"
    assert sorted(p.name for p in ckpt.glob("random_states_*.pkl")) == ["random_states_0.pkl", "random_states_1.pkl"]
    models = load_official_checkpoint(ckpt)
    saved = float(sum(p.double().abs().sum() for p in models.trainable_parameters()))
    assert saved == pytest.approx(sums[0], rel=1e-12)
    assert len(_metrics(out)) == 4  # one metrics line per step, from the main process only


def test_gt_only_folder_degrades_on_the_fly(photos, tmp_path):
    """GT-only data: Real-ESRGAN degradation in the loop, captions from a folder, validation on given LQ images."""
    captions = tmp_path / "captions"
    captions.mkdir()
    (captions / "coffee.txt").write_text("a cup of coffee on a saucer\n")
    val = tmp_path / "val"
    val.mkdir()
    Image.open(photos / "chelsea.png").resize((16, 16)).save(val / "cat.png")
    out = tmp_path / "run"
    cfg = _cfg(
        out,
        photos,
        max_steps=2,
        captions=str(captions),
        validate_every=2,
        validation_images=str(val),
        validation_steps=2,
        trace_samples=True,
    )
    Trainer(cfg, log=lambda m: None).train()
    rows = _metrics(out)
    assert len(rows) == 2 and all(np.isfinite(r["loss"]) for r in rows)
    grid = Image.open(out / "validation" / "step-0000002.png")
    assert grid.size == (64, 2 * 64)  # LQ row and restored row (no GT for user LQ images)
    seen = [json.loads(x) for x in (out / "samples" / "rank-0.jsonl").read_text().splitlines()]
    assert sum(len(r.get("images", [])) for r in seen) == 4


def test_adamw8bit_trains_and_checkpoints(pairs, tmp_path):
    bnb = import_bitsandbytes()  # 8-bit AdamW is optional (pip install bitsandbytes)
    trainer = Trainer(
        _cfg(tmp_path / "run", pairs, max_steps=1, optimizer="adamw8bit", checkpoint_every=1), log=lambda m: None
    )
    assert isinstance(trainer.optimizer.optimizer, bnb.optim.AdamW8bit)
    trainer.train()
    assert (tmp_path / "run" / "checkpoint-1" / "optimizer.bin").is_file()


def test_gradient_clipping_covers_controlnet_and_unet_only(pairs, tmp_path, monkeypatch):
    """Official train.py: clip_grad_norm_(controlnet + unet parameters); Refine gradients are not clipped."""
    trainer = Trainer(_cfg(tmp_path / "run", pairs, max_steps=1, max_grad_norm=1.0), log=lambda m: None)
    m = trainer.models
    clipped = [p for mod in (m.controlnet, m.unet) for p in mod.parameters() if p.requires_grad]
    refine = [p for p in m.refine.parameters() if p.requires_grad]
    assert clipped and refine
    g = 2.0**-7  # its square 2^-14 and every partial sum of squares (< 2^24 terms) are exact in float32
    for p in clipped:
        p.grad = torch.full_like(p, g)
    for p in refine:
        p.grad = torch.full_like(p, 3.0)  # alone far above max_grad_norm: it would dominate a joint norm
    n = sum(p.numel() for p in clipped)
    expected_norm = g * n**0.5  # hand computation: sqrt(n * g^2)
    assert expected_norm > 1.0  # so clipping happens
    norm = trainer.clip_gradients()
    # per-tensor norms are exact sums then one rounded sqrt; the norm of those len(clipped) norms adds at most
    # one rounding per term (+2 for the squares and the sqrt): (len + 2) float32 unit roundoffs, relative
    rel = (len(clipped) + 2) * 2.0**-24
    assert float(norm) == pytest.approx(expected_norm, rel=rel)
    coef = 1.0 / (expected_norm + 1e-6)  # torch.nn.utils.clip_grad_norm_: max_norm / (total_norm + 1e-6)
    for p in clipped:
        torch.testing.assert_close(p.grad, torch.full_like(p, g * coef), rtol=rel + 4 * 2.0**-24, atol=0)
    assert all(torch.equal(p.grad, torch.full_like(p, 3.0)) for p in refine)  # untouched

    calls = []
    monkeypatch.setattr(trainer, "clip_gradients", lambda: calls.append(1))
    trainer.train()
    assert calls == [1]  # the training loop clips through it, once per optimisation step


@pytest.mark.slow  # several training runs
def test_resume_latest_skips_damaged_checkpoints_and_an_explicit_one_is_refused(pairs, tmp_path):
    from sspir_core.errors import InputError

    out = tmp_path / "run"
    cfg = _cfg(out, pairs, max_steps=3, checkpoint_every=1)
    Trainer(cfg, log=lambda m: None).train()
    (out / "checkpoint-3" / "trainer_state.json").write_text("")  # a crash while it was written in place
    compact = out / "checkpoint-2" / "sspir.safetensors"
    compact.write_bytes(compact.read_bytes()[:1000])  # cut short
    (out / "checkpoint-4").mkdir()  # a save that never finished: no trainer_state.json yet
    logged: list[str] = []
    trainer = Trainer(replace(cfg, resume="latest", max_steps=4), log=logged.append)
    assert trainer.resume_from == out / "checkpoint-1"
    warnings = [m for m in logged if m.startswith("warning: --resume latest: skipping")]
    assert len(warnings) == 3
    assert "checkpoint-4 is incomplete: no trainer_state.json" in warnings[0]
    assert f"{out / 'checkpoint-3' / 'trainer_state.json'} is damaged" in warnings[1]
    assert str(compact) in warnings[2]
    with pytest.raises(InputError, match=r"checkpoint-3[/\\]trainer_state\.json is damaged \(JSONDecodeError"):
        Trainer(replace(cfg, resume=str(out / "checkpoint-3")), log=lambda m: None)
    assert trainer.train().step == 4
    assert [r["step"] for r in _metrics(out)] == [1, 2, 3, 4]


def test_trainer_state_is_written_atomically(pairs, tmp_path, monkeypatch):
    """A crash while trainer_state.json is written leaves no state file (an unfinished checkpoint), not a broken one."""
    out = tmp_path / "run"
    trainer = Trainer(_cfg(out, pairs, max_steps=1), log=lambda m: None)
    real = Path.write_text

    def crash_midway(self, text, *args, **kwargs):
        if "trainer_state.json" in self.name:
            real(self, text[: len(text) // 2], *args, **kwargs)
            raise OSError(5, "Input/output error")  # not a full disk: that removes the folder (test_checkpoint_faults)
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", crash_midway)
    with pytest.raises(OSError, match="Input/output"):
        trainer.train()
    monkeypatch.undo()
    ckpt = out / "checkpoint-1"
    assert ckpt.is_dir() and not (ckpt / "trainer_state.json").exists()
    assert not [p for p in ckpt.iterdir() if "trainer_state" in p.name]  # no half-written temporary either


def test_a_caption_damaged_mid_run_goes_into_the_data_report(photos, tmp_path):
    captions = tmp_path / "captions"
    captions.mkdir()
    for name in PHOTOS:
        (captions / f"{name}.txt").write_text(f"a photo of {name}\n")
    out = tmp_path / "run"
    trainer = Trainer(_cfg(out, photos, max_steps=2, captions=str(captions), caption_dropout=0.0), log=lambda m: None)
    assert (out / "data-report.txt").read_text() == ""  # all fine at the start
    (captions / "coffee.txt").write_bytes("caf\xe9".encode("latin-1"))  # replaced while the run goes on
    trainer.train()  # 2 steps x batch 2 = one pass over the 4 photos
    lines = (out / "data-report.txt").read_text().splitlines()
    assert lines == [
        f"skipped\t{photos / 'coffee.png'}\tmid-run: caption file {captions / 'coffee.txt'} is not UTF-8 "
        "text (unexpected end of data at byte 3): save it as UTF-8"
    ]


def _truncate(path: Path) -> None:
    """Keep the header, cut the pixel data in half (what an interrupted copy leaves)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_the_data_report_names_every_file_left_out_with_the_reason(photos, tmp_path):
    """Truncated pixel data, symlink loops, broken links and captions without an image: all in data-report.txt
    at start-up (the truncated file is not met again mid-run)."""
    data, captions = tmp_path / "data", tmp_path / "captions"
    data.mkdir()
    captions.mkdir()
    for name in PHOTOS:
        (data / f"{name}.png").write_bytes((photos / f"{name}.png").read_bytes())
        (captions / f"{name}.txt").write_text(f"a photo of {name}\n")
    _truncate(data / "rocket.png")
    (data / "loop.png").symlink_to(data / "loop.png")
    (data / "old.png").symlink_to(tmp_path / "moved-away.png")
    (captions / "deleted.txt").write_text("the image of this caption was deleted")
    logged: list[str] = []
    out = tmp_path / "run"
    trainer = Trainer(_cfg(out, data, max_steps=2, captions=str(captions)), log=logged.append)
    lines = (out / "data-report.txt").read_text().splitlines()
    assert lines[:3] == [
        f"skipped\t{data / 'loop.png'}\tsymlink loop (the link resolves back to itself)",
        f"skipped\t{data / 'old.png'}\tbroken symlink (its target {tmp_path / 'moved-away.png'} does not exist)",
        f"skipped\t{captions / 'deleted.txt'}\tcaption without an image: no deleted.<ext> in {data}",
    ]
    assert lines[3].startswith(f"skipped\t{data / 'rocket.png'}\ttruncated or damaged pixel data (OSError: ")
    assert len(lines) == 4
    assert [it.gt.name for it in trainer.dataset.items] == ["astronaut.png", "chelsea.png", "coffee.png"]
    trainer.train()  # 2 steps x batch 2 over 3 images: every usable image is read, the truncated one never
    assert (out / "data-report.txt").read_text().splitlines() == lines
    assert sum("rocket.png" in m for m in logged) == 1  # the start-up summary only


@pytest.mark.slow  # a training run with two data workers
def test_a_file_damaged_mid_run_is_reported_once_with_two_workers(photos, tmp_path, capfd):
    """Each DataLoader worker holds its own copy of the data set: the trainer, not the workers, prints it."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("astronaut", "coffee"):
        (data / f"{name}.png").write_bytes((photos / f"{name}.png").read_bytes())
    out = tmp_path / "run"
    trainer = Trainer(_cfg(out, data, max_steps=4, num_workers=2))
    _truncate(data / "coffee.png")  # after the scan
    trainer.train()  # batch 2 of 2 images: every batch holds coffee.png, and the batches alternate between workers
    err = capfd.readouterr().err
    warned = [line for line in err.splitlines() if "coffee.png" in line]
    assert len(warned) == 1 and warned[0].startswith(f"warning: skipping {data / 'coffee.png'}: ")
    lines = (out / "data-report.txt").read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"skipped\t{data / 'coffee.png'}\tmid-run: ")
