"""Crash safety of `sspir train` checkpoints, with faults injected on purpose (issue 23).

- a save killed at each of its phases (after the weights, after the optimizer, before and after
  trainer_state.json, while deleting stale checkpoints), with --checkpoints-total-limit 1 and 2: the newest
  complete checkpoint survives and `--resume latest` continues bit-exactly (weights and metrics.jsonl equal to an
  uninterrupted run's); for three of them the trainer is a child process that `os._exit(137)`s at the point;
- every file resume reads is checked first: a damaged one is skipped by `latest` with a warning naming it, refused
  by an explicit --resume; none usable stops with a list (`--resume none` starts over); metrics.jsonl rows past the
  resumed step are moved aside, never dropped;
- a full disk: the pre-save check and a writer's out-of-space error both stop with the disk, the checkpoint and
  the sizes, remove the partial folder, and leave the previous checkpoint resumable (a real tmpfs when we may mount).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from sspir_core.cli import main as cli_main
from sspir_core.errors import InputError, NoSpaceError
from sspir_core.training import TrainConfig, Trainer
from sspir_core.training.trainer import FAULT_ENV, FAULT_POINTS, InjectedFault, read_state, resolve_resume
from sspir_core.weights.weights_file import read_state_dict

# Every test here trains (a reference run, then runs killed or starved at each phase of a save): all slow.
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
STEPS, FAULT_STEP = 4, 3
TIMING = ("step_time_s", "samples_per_s")
WEIGHTS = (
    "unet/diffusion_pytorch_model.safetensors",
    "controlnet/diffusion_pytorch_model.safetensors",
    "sspir.safetensors",
)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    skdata = pytest.importorskip("skimage.data", reason="scikit-image ships the test photos (pip install .[test])")
    photos = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        Image.fromarray(getattr(skdata, name)()).convert("RGB").resize((96, 96), Image.BICUBIC).save(
            photos / f"{name}.png"
        )
    out = tmp_path_factory.mktemp("pairs")
    assert cli_main(["make-pairs", str(photos), str(out), "--crop", "64", "--seed", "0"]) == 0
    return out


def _cfg(out: Path, data: Path, limit: int | None, **kw) -> TrainConfig:
    """The same run as `_argv` gives on the command line: tiny preset, a checkpoint every step, on the CPU."""
    base = dict(
        output=str(out),
        data=[str(data)],
        preset="tiny-random",
        resolution=64,
        batch_size=2,
        grad_accum=1,
        max_steps=STEPS,
        mixed_precision="no",
        checkpoint_every=1,
        validate_every=1000,
        report_to="none",
        num_workers=0,
        log_every=1000,
        checkpoints_total_limit=limit,
        cpu=True,
    )
    base.update(kw)
    return TrainConfig(**base)


def _argv(out: Path, data: Path, limit: int) -> list[str]:
    return [
        "train",
        "--cpu",
        "--preset",
        "tiny-random",
        "--data",
        str(data),
        "--output",
        str(out),
        "--resolution",
        "64",
        "--batch-size",
        "2",
        "--grad-accum",
        "1",
        "--max-steps",
        str(STEPS),
        "--mixed-precision",
        "no",
        "--checkpoint-every",
        "1",
        "--validate-every",
        "1000",
        "--report-to",
        "none",
        "--num-workers",
        "0",
        "--log-every",
        "1000",
        "--checkpoints-total-limit",
        str(limit),
    ]


_REFERENCES: dict[int | None, Path] = {}


@pytest.fixture(scope="module")
def reference(pairs, tmp_path_factory):
    """``reference(limit)``: the output folder of one uninterrupted run per limit (made once per module)."""

    def get(limit: int | None) -> Path:
        if limit not in _REFERENCES:
            out = tmp_path_factory.mktemp(f"reference-{limit}") / "run"
            Trainer(_cfg(out, pairs, limit), log=lambda m: None).train()
            _REFERENCES[limit] = out
        return _REFERENCES[limit]

    yield get
    _REFERENCES.clear()


def _rows(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in path.read_text().splitlines()]


def _checkpoints(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("checkpoint-*"))


def assert_same_run(out: Path, ref: Path) -> None:
    """Bit-exact: metrics.jsonl (timing left out) and every weight tensor of the final checkpoint."""
    assert _rows(out / "metrics.jsonl") == _rows(ref / "metrics.jsonl")
    assert _checkpoints(out) == _checkpoints(ref)
    final = f"checkpoint-{STEPS}"
    for rel in WEIGHTS:
        a, b = read_state_dict(out / final / rel), read_state_dict(ref / final / rel)
        assert a.keys() == b.keys(), rel
        assert all(torch.equal(a[k], b[k]) for k in a), rel
    a = torch.load(out / final / "refine" / "refine.pt", weights_only=True)
    b = torch.load(ref / final / "refine" / "refine.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _run_child(out: Path, data: Path, limit: int, fault: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        FAULT_ENV: fault,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    return subprocess.run(
        [sys.executable, "-m", "sspir_core.cli", *_argv(out, data, limit)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# after these points checkpoint-3 is complete (trainer_state.json written); before them the newest is checkpoint-2
COMPLETE_AT_FAULT = {
    "after-weights": False,
    "after-optimizer": False,
    "before-state": False,
    "after-state": True,
    "during-delete": True,
}


# a child process costs ~5 s more than in-process (imports): the phases that leave partial files, with limit 1
IN_A_CHILD = {("after-optimizer", 1), ("before-state", 1), ("during-delete", 1)}


@pytest.mark.parametrize("limit", [1, 2])
@pytest.mark.parametrize("point", FAULT_POINTS)
def test_a_save_killed_at_any_phase_resumes_bit_exactly(point, limit, pairs, reference, tmp_path, monkeypatch):
    out = tmp_path / "run"
    fault = f"{point}@{FAULT_STEP}"
    if (point, limit) in IN_A_CHILD:  # a real process ended by os._exit(137) at the point: nothing cleans up
        proc = _run_child(out, pairs, limit, fault)
        assert proc.returncode == 137, proc.stderr[-3000:]
    else:  # in-process: InjectedFault is a BaseException, so no `except Exception` tidies up either
        monkeypatch.setenv(FAULT_ENV, fault + ":raise")
        with pytest.raises(InjectedFault):
            Trainer(_cfg(out, pairs, limit), log=lambda m: None).train()
        monkeypatch.delenv(FAULT_ENV)
    newest = FAULT_STEP if COMPLETE_AT_FAULT[point] else FAULT_STEP - 1
    read_state(out / f"checkpoint-{newest}")  # complete and every file intact
    if point == "during-delete":  # the stale checkpoint lost its state file first, then files
        stale = out / f"checkpoint-{FAULT_STEP - limit}"
        assert stale.is_dir() and not (stale / "trainer_state.json").exists()

    logged: list[str] = []
    trainer = Trainer(_cfg(out, pairs, limit, resume="latest"), log=logged.append)
    assert trainer.resume_from == out / f"checkpoint-{newest}"
    trainer.train()
    assert f"resumed from {out / f'checkpoint-{newest}'} at step {newest}" in logged
    assert_same_run(out, reference(limit))
    aside = list(out.glob("metrics.after-step-*.jsonl"))
    if newest < FAULT_STEP:  # step 3's row (logged before its save was killed) is kept aside, not dropped
        assert [p.name.startswith(f"metrics.after-step-{newest}.") for p in aside] == [True]
        assert _rows(aside[0]) == _rows(reference(limit) / "metrics.jsonl")[newest:FAULT_STEP]
        assert any(f"moved to {aside[0]}" in m for m in logged)
    else:
        assert aside == []


# ---------------------------------------------------------------------------------------------- damaged files


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_a_byte_of_the_pickle(path: Path) -> None:
    """Damage inside the archive, its size unchanged: one byte of the data.pkl record (caught by its CRC)."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("data.pkl"))
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    raw[info.header_offset + 30 + name_len + extra_len + 5] ^= 0xFF  # 5 bytes into the record's data
    path.write_bytes(bytes(raw))


DAMAGES = [
    ("refine/refine.pt", _truncate, "is damaged: its zip directory, at the end of the file, is missing"),
    ("optimizer.bin", _truncate, "is damaged: its zip directory, at the end of the file, is missing"),
    ("scheduler.bin", _truncate, "is damaged: its zip directory, at the end of the file, is missing"),
    ("random_states_0.pkl", _truncate, "is damaged: its zip directory, at the end of the file, is missing"),
    ("random_states_0.pkl", _flip_a_byte_of_the_pickle, "Bad CRC-32"),
    ("random_states_0.pkl", lambda p: p.write_bytes(b""), "random_states_0.pkl is empty"),
    ("sspir.safetensors", _truncate, "not a readable safetensors file"),
]


@pytest.fixture
def stopped_at_3(reference, tmp_path) -> Path:
    """A copy of the uninterrupted run as it was after step 3 (checkpoints 1-3, metrics rows 1-3)."""
    out = tmp_path / "run"
    shutil.copytree(reference(None), out)
    shutil.rmtree(out / f"checkpoint-{STEPS}")
    rows = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("".join(r + "\n" for r in rows[:3]))
    return out


@pytest.mark.parametrize(("rel", "damage", "why"), DAMAGES, ids=[f"{r}-{d.__name__}" for r, d, _ in DAMAGES])
def test_resume_checks_every_file_it_reads(rel, damage, why, stopped_at_3, pairs):
    out = stopped_at_3
    damage(out / "checkpoint-3" / rel)
    logged: list[str] = []
    cfg = _cfg(out, pairs, None, resume="latest")
    assert resolve_resume(cfg, logged.append) == out / "checkpoint-2"
    assert len(logged) == 1 and logged[0].startswith(f"warning: --resume latest: skipping {out / 'checkpoint-3'}")
    assert str(out / "checkpoint-3" / rel) in logged[0] and why in logged[0]
    with pytest.raises(InputError) as e:  # an explicit --resume stops, naming the file
        resolve_resume(replace(cfg, resume=str(out / "checkpoint-3")))
    assert str(out / "checkpoint-3" / rel) in str(e.value) and why in str(e.value)


def test_resume_latest_past_a_damaged_optimizer_continues_exactly(stopped_at_3, pairs, reference):
    """The reported case: a truncated optimizer.bin gave a raw PytorchStreamReader error naming no file."""
    out = stopped_at_3
    _truncate(out / "checkpoint-3" / "optimizer.bin")
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 4, "loss": 0.1')  # a line cut by the crash: moved aside too, not a JSON error
    logged: list[str] = []
    Trainer(_cfg(out, pairs, None, resume="latest"), log=logged.append).train()
    assert any(str(out / "checkpoint-3" / "optimizer.bin") in m for m in logged if m.startswith("warning"))
    assert_same_run(out, reference(None))
    aside = list(out.glob("metrics.after-step-2.*.jsonl"))
    assert len(aside) == 1 and aside[0].read_text().splitlines()[-1] == '{"step": 4, "loss": 0.1'


def test_a_failing_load_state_names_the_checkpoint(stopped_at_3, pairs):
    """A file that checks out but does not fit (an optimizer state of something else): the error names the folder."""
    torch.save({"state": {}, "param_groups": []}, stopped_at_3 / "checkpoint-3" / "optimizer.bin")
    trainer = Trainer(_cfg(stopped_at_3, pairs, None, resume=str(stopped_at_3 / "checkpoint-3")), log=lambda m: None)
    with pytest.raises(
        InputError,
        match=rf"could not resume from {stopped_at_3 / 'checkpoint-3'}: loading its state "
        r"failed \(ValueError",
    ):
        trainer.train()


def test_no_usable_checkpoint_stops_and_resume_none_starts_over(stopped_at_3, pairs):
    out = stopped_at_3
    (out / "checkpoint-1" / "trainer_state.json").unlink()
    _truncate(out / "checkpoint-2" / "scheduler.bin")
    _truncate(out / "checkpoint-3" / "random_states_0.pkl")
    before = (out / "metrics.jsonl").read_text()
    with pytest.raises(InputError) as e:
        Trainer(_cfg(out, pairs, None, resume="latest"), log=lambda m: None)
    msg = str(e.value)
    assert "none of the 3 checkpoint folder(s)" in msg and "--resume none" in msg and "new --output" in msg
    for name, file in (
        ("checkpoint-1", "no trainer_state.json"),
        ("checkpoint-2", "scheduler.bin"),
        ("checkpoint-3", "random_states_0.pkl"),
    ):
        assert f"{name}: " in msg and file in msg
    assert (out / "metrics.jsonl").read_text() == before  # nothing touched

    assert cli_main(["train", "--resume", "latest", *_argv(out, pairs, 1)[1:]]) == 2  # the CLI says it too
    logged: list[str] = []
    assert resolve_resume(_cfg(out, pairs, None), logged.append) is None  # no --resume: a fresh start, said aloud
    assert len(logged) == 1 and "already has checkpoint folders (newest checkpoint-3)" in logged[0]
    logged.clear()
    trainer = Trainer(_cfg(out, pairs, None, resume="none", max_steps=1), log=logged.append)
    assert trainer.resume_from is None
    trainer.train()
    assert [r["step"] for r in _rows(out / "metrics.jsonl")] == [1]
    aside = list(out.glob("metrics.after-step-0.*.jsonl"))
    assert len(aside) == 1 and aside[0].read_text() == before  # the old run's rows, kept


def test_the_limit_spares_checkpoints_past_the_one_resumed(reference, pairs, tmp_path):
    """An explicit --resume of an earlier checkpoint: the later ones of the first run are replaced when reached,
    not deleted as stale before (they may be all the user has if this run fails)."""
    out = tmp_path / "run"
    shutil.copytree(reference(None), out)
    cfg = _cfg(out, pairs, 1, resume=str(out / "checkpoint-2"))
    logged: list[str] = []
    Trainer(cfg, log=logged.append).train(stop_after=1)
    assert _checkpoints(out) == ["checkpoint-3", "checkpoint-4"]
    assert f"note: replacing {out / 'checkpoint-3'} (left by an earlier run)" in logged
    Trainer(replace(cfg, resume="latest"), log=lambda m: None).train()  # latest: checkpoint-4, nothing to do
    Trainer(replace(cfg, resume=str(out / "checkpoint-3")), log=lambda m: None).train()
    assert _checkpoints(out) == ["checkpoint-4"]
    assert _rows(out / "metrics.jsonl") == _rows(reference(None) / "metrics.jsonl")
    for rel in WEIGHTS:
        a, b = read_state_dict(out / "checkpoint-4" / rel), read_state_dict(reference(None) / "checkpoint-4" / rel)
        assert all(torch.equal(a[k], b[k]) for k in a), rel


# ---------------------------------------------------------------------------------------------- a full disk


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _gb(n: int) -> str:
    return f"{n / 1e9:.3g} GB"


def _finish_and_compare(out: Path, pairs: Path, reference, limit: int) -> None:
    logged: list[str] = []
    Trainer(_cfg(out, pairs, limit, resume="latest"), log=logged.append).train()
    assert f"resumed from {out / 'checkpoint-2'} at step 2" in logged
    assert_same_run(out, reference(limit))


def test_the_free_space_check_stops_before_writing(pairs, reference, tmp_path, monkeypatch):
    out = tmp_path / "run"
    Trainer(_cfg(out, pairs, 1), log=lambda m: None).train(stop_after=2)
    need = _size(out / "checkpoint-2")
    usage = shutil.disk_usage(out)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=need - 1))
    with pytest.raises(NoSpaceError) as e:
        Trainer(_cfg(out, pairs, 1, resume="latest"), log=lambda m: None).train()
    monkeypatch.undo()
    mount = str(out.resolve())
    while not os.path.ismount(mount):
        mount = os.path.dirname(mount)
    assert str(e.value).startswith(
        f"no space left on {mount} for checkpoint-3 (needs about {_gb(need)}, {_gb(need - 1)} free)"
    )
    assert not (out / "checkpoint-3").exists()
    assert _checkpoints(out) == ["checkpoint-2"]
    _finish_and_compare(out, pairs, reference, 1)


def _full_disk_in_torch_save(real):
    def save(obj, f, *args, **kwargs):
        if Path(str(f)).name == "optimizer.bin":
            Path(f).write_bytes(b"PK\x03\x04" + b"\0" * 100)  # what torch's zip writer leaves when the disk fills
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4352 vs 4240")
        return real(obj, f, *args, **kwargs)

    return save


def _full_disk_in_safetensors(real):
    def save_file(tensors, filename, *args, **kwargs):
        if "sspir.safetensors" in Path(filename).name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        return real(tensors, filename, *args, **kwargs)

    return save_file


@pytest.mark.parametrize(
    ("module", "name", "fake"),
    [("torch", "save", _full_disk_in_torch_save), ("safetensors.torch", "save_file", _full_disk_in_safetensors)],
    ids=["optimizer-torch-zip-writer", "compact-safetensors-ENOSPC"],
)
def test_a_save_that_fills_the_disk_removes_its_partial_folder(
    module, name, fake, pairs, reference, tmp_path, monkeypatch
):
    import importlib

    out = tmp_path / "run"
    Trainer(_cfg(out, pairs, 1), log=lambda m: None).train(stop_after=2)
    before = {p.relative_to(out).as_posix(): p.read_bytes() for p in (out / "checkpoint-2").rglob("*") if p.is_file()}
    mod = importlib.import_module(module)
    monkeypatch.setattr(mod, name, fake(getattr(mod, name)))
    with pytest.raises(
        NoSpaceError,
        match=r"^no space left on \S+ for checkpoint-3 \(needs about [\d.e+-]+ GB, "
        r"[\d.e+-]+ GB free\).*its partial folder was removed",
    ):
        Trainer(_cfg(out, pairs, 1, resume="latest"), log=lambda m: None).train()
    monkeypatch.undo()
    assert _checkpoints(out) == ["checkpoint-2"]  # no partial checkpoint-3, the previous one untouched
    assert before == {
        p.relative_to(out).as_posix(): p.read_bytes() for p in (out / "checkpoint-2").rglob("*") if p.is_file()
    }
    _finish_and_compare(out, pairs, reference, 1)


@pytest.fixture
def small_tmpfs(tmp_path):
    """An 80 MB tmpfs: room for two tiny checkpoints (~31 MB each), not three; skipped where we may not mount."""
    if sys.platform != "linux" or shutil.which("mount") is None:
        pytest.skip(
            f"a real full disk needs a Linux tmpfs mount (platform {sys.platform}, mount "
            f"{'found' if shutil.which('mount') else 'missing'}); the simulated full-disk tests above cover the same "
            "save path"
        )
    mnt = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    probe = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=80m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({probe.stderr.strip()}); the simulated full-disk tests cover it")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_real_full_disk(small_tmpfs, pairs, reference, tmp_path, monkeypatch):
    out = small_tmpfs / "run"
    Trainer(_cfg(out, pairs, 2), log=lambda m: None).train(stop_after=2)
    assert _checkpoints(out) == ["checkpoint-1", "checkpoint-2"]
    kept = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.glob("checkpoint-*/**/*") if p.is_file()}
    free = shutil.disk_usage(out).free
    assert _size(out / "checkpoint-2") > free  # the next checkpoint cannot fit
    with pytest.raises(NoSpaceError, match=rf"^no space left on {small_tmpfs} for checkpoint-3 \(needs about "):
        Trainer(_cfg(out, pairs, 2, resume="latest"), log=lambda m: None).train()  # the pre-save check
    assert _checkpoints(out) == ["checkpoint-1", "checkpoint-2"]

    # an estimate that is wrong (another writer filled the disk meanwhile): the writers themselves hit ENOSPC
    monkeypatch.setattr(Trainer, "_size_estimate", lambda self, path: 0)
    with pytest.raises(
        NoSpaceError, match=r"for checkpoint-3 .*the save failed: .*its partial folder was removed"
    ) as e:
        Trainer(_cfg(out, pairs, 2, resume="latest"), log=lambda m: None).train()
    monkeypatch.undo()
    said_free = float(re.search(r"([\d.e+-]+) GB free", str(e.value)).group(1)) * 1e9
    assert said_free >= free - 2**20  # measured once the failed writer let go of its partial file
    assert _checkpoints(out) == ["checkpoint-1", "checkpoint-2"]
    assert shutil.disk_usage(out).free >= free - 2**20  # the partial files are gone (metrics rows aside)
    assert kept == {p.relative_to(out).as_posix(): p.read_bytes() for p in out.glob("checkpoint-*/**/*") if p.is_file()}
    moved = tmp_path / "moved"  # resumable: finish it on a disk with room
    shutil.copytree(out, moved)
    _finish_and_compare(moved, pairs, reference, 2)
