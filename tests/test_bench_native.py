"""`sspir bench --parts native`: its pure parts, without a server (the real run: tests/comfyui/test_bench_native.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from sspir_core.bench import native
from sspir_core.bench import report as bench_report
from sspir_core.bench.settings import EXTRA_PARTS, EXTRA_SUMMARIES, BenchSettings
from sspir_core.cli import bench as cli_bench
from sspir_core.cli import main
from sspir_core.errors import InputError


def _probe():
    """The bench probe as a plain module (outside ComfyUI it registers nothing)."""
    from sspir_core.host import bench_probe

    return bench_probe


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli_bench.add_parser(parser.add_subparsers())
    return parser.parse_args(["bench", *argv])


# ---------------------------------------------------------------------------------------------- settings


def test_flags_reach_the_settings_and_the_device_defaults_apply():
    args = _parse(
        [
            "--parts",
            "native",
            "--native-size",
            "96",
            "--native-steps",
            "3",
            "--repeats",
            "2",
            "--native-checkpoint",
            "a.safetensors",
            "--native-sspir",
            "b.safetensors",
            "--native-clip-vision",
            "c.safetensors",
            "--cfg",
            "5",
            "--seed",
            "7",
        ]
    )
    s = cli_bench.build_settings(args, "cpu", "tiny")
    assert (s.native_size, s.native_steps, s.repeats, s.cfg, s.seed) == (96, 3, 2, 5.0, 7)
    assert (s.native_checkpoint, s.native_sspir, s.native_clip_vision) == (
        "a.safetensors",
        "b.safetensors",
        "c.safetensors",
    )
    assert native.native_plan(s) == {"size_px": 96, "input_px": 24, "steps": 3, "order": "interleaved"}
    # unset: the sizes, a toy run on the CPU and 512 -> 2048 px, 50 steps on CUDA
    plain = cli_bench.build_settings(_parse([]), "cpu", "tiny")
    assert native.native_plan(plain) == {"size_px": 64, "input_px": 16, "steps": 4, "order": "interleaved"}
    cuda = cli_bench.build_settings(_parse(["--native-order", "interleaved"]), "cuda:1", "sd15")
    assert native.native_plan(cuda) == {"size_px": 2048, "input_px": 512, "steps": 50, "order": "interleaved"}
    cuda = cli_bench.build_settings(_parse([]), "cuda:1", "sd15")
    assert native.native_plan(cuda)["order"] == "sequential" and cuda.dtype == "fp16"


def test_help_names_the_defaults_the_part_uses():
    # the help is written as literals (importing the part would load torch for every `sspir --help`): tie them
    parser = argparse.ArgumentParser()
    cli_bench.add_parser(parser.add_subparsers())
    text = parser._subparsers._group_actions[0].choices["bench"].format_help().replace("\n", " ")
    text = " ".join(text.split())
    (cpu_size, cpu_steps), (cuda_size, cuda_steps) = native.DEFAULTS["cpu"], native.DEFAULTS["cuda"]
    assert f"default {cpu_size} on the CPU, {cuda_size} on CUDA" in text
    assert f"default {cpu_steps} on the CPU, {cuda_steps} on CUDA" in text


def test_cli_offers_the_orders_the_part_has():
    parser = argparse.ArgumentParser()
    cli_bench.add_parser(parser.add_subparsers())
    action = next(a for a in parser._subparsers._group_actions[0].choices["bench"]._actions if a.dest == "native_order")
    assert tuple(action.choices) == native.ORDERS and set(native.ORDER_WORDS) == set(native.ORDERS)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"native_size": 48}, "multiple of 32"),
        ({"native_size": 16}, "multiple of 32"),
        ({"native_steps": -1}, "steps and repeats"),
        ({"repeats": 0}, "steps and repeats"),
        ({"native_checkpoint": "a.safetensors"}, "all three"),
        ({"native_order": "parallel"}, "order must be one of interleaved, sequential"),
    ],
)
def test_bad_native_settings_are_input_errors(changes, match):
    with pytest.raises(InputError, match=match):
        native.native_plan(BenchSettings(**changes))


def test_cli_refuses_bad_native_flags_before_running(capsys):
    assert main(["bench", "--device", "cpu", "--parts", "native", "--native-size", "100"]) == 2
    assert "multiple of 32" in capsys.readouterr().err
    assert main(["bench", "--device", "cpu", "--parts", "native", "--native-sspir", "x.safetensors"]) == 2
    assert "all three" in capsys.readouterr().err


def test_missing_harness_says_how_to_set_it_up(tmp_path):
    with pytest.raises(native.NativeBenchError, match=r"bash scripts/setup\.sh --comfyui"):
        native.load_harness(tmp_path)


def test_server_flags_follow_device_dtype_and_threads():
    assert native.server_args(BenchSettings(device="cpu", dtype="fp32")) == (True, ("--fp32-unet", "--fp32-vae"), {})
    assert native.server_args(BenchSettings(device="cuda", dtype="fp16"))[:2] == (False, ("--fp16-unet", "--fp16-vae"))
    assert native.server_args(BenchSettings(device="cuda:1", dtype="bf16"))[:2] == (
        False,
        ("--bf16-unet", "--bf16-vae", "--cuda-device", "1"),
    )
    assert native.server_args(BenchSettings(threads=1))[2] == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_native_part_is_registered_with_a_summary():
    assert EXTRA_PARTS["native"] == (native.bench_native, native.native_lines)
    assert EXTRA_SUMMARIES["native"] is native.native_summary


# ---------------------------------------------------------------------------------------------- graphs


@pytest.mark.parametrize("route", native.ROUTES)
def test_graphs_are_closed_and_use_the_run_settings(route):
    files = native.NativeFiles(Path("/m/sd.safetensors"), Path("/m/ssp.safetensors"), Path("/m/cv.safetensors"), True)
    g = native.GRAPHS[route]("lq.png", "a caption", files, steps=3, cfg=5.5, seed=9, dtype="fp16", prefix="p")
    links = [(nid, v) for nid, node in g.items() for v in node["inputs"].values() if isinstance(v, list)]
    assert all(src in g and isinstance(idx, int) for _, (src, idx) in links)
    sampler = g[native.SAMPLER_NODE]["inputs"]
    assert (sampler["steps"], sampler["cfg"], sampler["seed"]) == (3, 5.5, 9)
    names = {v for node in g.values() for v in node["inputs"].values() if isinstance(v, str)}
    assert {"sd.safetensors", "ssp.safetensors", "cv.safetensors", "lq.png", "fp16", "a caption", "p"} <= names
    assert [n["class_type"] for n in g.values()].count("SaveImage") == 1


# ---------------------------------------------------------------------------------------------- order


@pytest.mark.parametrize(
    "order, expected",
    [
        # servers up, then the warm-ups (round 0), then each round starting one route later than the one before
        (
            "interleaved",
            [
                "+native",
                "+reference",
                "native 0",
                "reference 0",
                "reference 1",
                "native 1",
                "native 2",
                "reference 2",
                "-reference",
                "-native",
            ],
        ),
        (
            "sequential",
            [
                "+native",
                "native 0",
                "native 1",
                "native 2",
                "-native",
                "+reference",
                "reference 0",
                "reference 1",
                "reference 2",
                "-reference",
            ],
        ),
    ],
)
def test_prompts_run_in_the_order_asked(monkeypatch, tmp_path, order, expected):
    events = []

    class FakeRun:
        def __init__(self, route, *args):
            self.route = route

        def __enter__(self):
            events.append(f"+{self.route}")
            return self

        def __exit__(self, *exc):
            events.append(f"-{self.route}")

        def prompt(self, i):
            events.append(f"{self.route} {i}")

        def summary(self):
            return {"s_per_image": 1.0, "peak_above_mib": 1.0, "peak_mib": 1.0}

    class Harness:
        COMFYUI_VERSION = "0"
        ComfyUIError = RuntimeError

        @staticmethod
        def comfyui_dir():
            return tmp_path

        @staticmethod
        def read_version(folder):
            return "0"

        @staticmethod
        def cache_root():
            return tmp_path

    files = native.NativeFiles(*(tmp_path / n for n in ("a", "b", "c")), demo=True)
    for f in (files.checkpoint, files.sspir, files.clip_vision):
        f.write_bytes(b"x")
    monkeypatch.setattr(native, "RouteRun", FakeRun)
    monkeypatch.setattr(native, "load_harness", lambda: Harness)
    monkeypatch.setattr(native, "bench_files", lambda settings, harness: files)
    r = native.bench_native(BenchSettings(repeats=2, native_order=order))
    assert events == expected and r["order"] == order and r["time_ratio"] == 1.0


def test_round_order_rotates():
    assert [native.round_order(i, 2) for i in range(3)] == [[0, 1], [1, 0], [0, 1]]
    assert native.round_order(4, 3) == [1, 2, 0]


# ---------------------------------------------------------------------------------------------- timing


def _entry(messages):
    return {"status": {"status_str": "success", "completed": True, "messages": messages}}


def test_execution_seconds_from_the_history_timestamps():
    # hand count: 1_700_000_003_250 - 1_700_000_000_750 ms = 2.5 s
    entry = _entry(
        [
            ["execution_start", {"prompt_id": "p", "timestamp": 1_700_000_000_750}],
            ["execution_cached", {"nodes": ["ckpt", "cv"], "prompt_id": "p", "timestamp": 1_700_000_000_760}],
            ["execution_success", {"prompt_id": "p", "timestamp": 1_700_000_003_250}],
        ]
    )
    assert native.execution_seconds(entry) == pytest.approx(2.5)
    assert native.cached_nodes(entry) == ["ckpt", "cv"]
    failed = _entry([["execution_start", {"timestamp": 1}], ["execution_error", {"timestamp": 5}]])
    assert native.execution_seconds(failed) is None and native.cached_nodes(failed) == []


def test_route_summary_takes_median_time_and_largest_peaks():
    mib = native.MIB
    rows = [
        {"server_s": 9.0, "wall_s": 9.3, "output_px": [64, 64]},  # warm-up: no memory, time reported apart
        {"server_s": 3.0, "wall_s": 3.2, "measure": "m", "baseline_bytes": 100 * mib, "peak_bytes": 110 * mib},
        {"server_s": 1.0, "wall_s": 1.1, "measure": "m", "baseline_bytes": 102 * mib, "peak_bytes": 107 * mib},
        {"server_s": 2.0, "wall_s": 2.4, "measure": "m", "baseline_bytes": 101 * mib, "peak_bytes": 116 * mib},
    ]
    r = native.summarise_route(rows, start_s=4.0)
    assert r["s_per_image"] == 2.0 and r["first_s"] == 9.0 and r["seconds"] == [3.0, 1.0, 2.0]
    assert r["timing"].startswith("server")
    assert r["peak_above_mib"] == 15.0 and r["peak_mib"] == 116.0 and r["baseline_mib"] == 100.0
    rows[2]["server_s"] = None  # one entry without timestamps: every time is the wall time then
    wall = native.summarise_route(rows)
    assert wall["timing"].startswith("wall") and wall["s_per_image"] == 2.4 and wall["first_s"] == 9.3


# ---------------------------------------------------------------------------------------------- report


def _result():
    def route(s, first, above, peak):
        return {
            "timing": "server execution_start -> execution_success",
            "s_per_image": s,
            "first_s": first,
            "measure": "VmHWM (peak RSS)",
            "peak_above_mib": above,
            "peak_mib": peak,
            "seconds": [s],
            "output_px": [[64, 64]] * 2,
        }

    r = {
        "size_px": 64,
        "input_px": 16,
        "steps": 4,
        "order": "interleaved",
        "cfg": 7.5,
        "seed": 0,
        "dtype": "fp32",
        "device": "cpu",
        "repeats": 3,
        "comfyui": "0.3.75",
        "demo_files": True,
        "files": {"checkpoint": "/x/sd.safetensors"},
        "reference_tiling": [96, 32, 1024],
        "native": route(1.5, 9.0, 20.0, 2800.0),
        "reference": route(2.0, 11.0, 40.0, 3500.0),
    }
    r.update(native.route_ratios(r["native"], r["reference"]))
    return r


def test_report_lines_and_summary_show_both_routes_side_by_side():
    r = _result()
    assert (r["time_ratio"], r["peak_ratio"], r["abs_peak_ratio"]) == (0.75, 0.5, 0.8)  # 1.5/2, 20/40, 2800/3500
    lines = native.native_lines(r)
    assert "16 -> 64 px, 4 steps, CFG 7.5, fp32, native demo files" in lines[0]
    row = {line.split()[0]: line.split() for line in lines if line.split()[0] in native.ROUTES}
    assert row["native"][1:3] == ["1.50s", "9.00s"] and row["reference"][1:3] == ["2.00s", "11.00s"]
    assert "time x0.75, peak above idle x0.50, absolute peak x0.80" in "\n".join(lines)
    assert "RAM: VmHWM" in "\n".join(lines)
    full = {
        "config": "tiny",
        "dtype": "fp32",
        "env": {"torch": "2", "device": "cpu", "threads": 2},
        "build_s": 0.0,
        "total_s": 1.0,
        "native": r,
    }
    full["summary"] = bench_report.summary_line(full)
    text = bench_report.format_report(full)
    assert lines[0] in text
    assert (
        "native vs reference (demo files; --config not used) 16->64px 4 steps: 1.50 vs 2.00 s/image (x0.75), RSS "
        "peak +20 vs +40 MiB above "
        "idle (2800 vs 3500 MiB absolute)"
    ) in full["summary"]
    zero = {**r["reference"], "peak_above_mib": 0.0}
    assert native.route_ratios(r["native"], zero)["peak_ratio"] is None


def test_cuda_report_says_vram_and_reserved():
    r = _result()
    r["device"] = "cuda"
    for k, v in (("native", 900.0), ("reference", 1200.0)):
        r[k].update(measure="cuda max_memory_allocated", reserved_peak_mib=v)
    text = "\n".join(native.native_lines(r))
    assert "VRAM: cuda max_memory_allocated" in text and "reserved peak: native 900 MiB, reference 1200 MiB" in text
    assert "VRAM peak" in native.native_summary(r)


# ---------------------------------------------------------------------------------------------- probe


STATUS = """Name:\tpython
Umask:\t0022
State:\tS (sleeping)
VmPeak:\t 9812344 kB
VmSize:\t 9746808 kB
VmLck:\t       0 kB
VmHWM:\t 3066532 kB
VmRSS:\t 2864100 kB
RssAnon:\t 2811000 kB
VmSwap:\t       0 kB
Threads:\t23
"""


def test_probe_reads_vmhwm_and_vmrss_in_bytes():
    status = _probe().parse_status(STATUS)
    assert status["VmHWM"] == 3066532 * 1024 and status["VmRSS"] == 2864100 * 1024
    assert "RssAnon" not in status and "Threads" not in status  # only the Vm* lines


def test_probe_outside_comfyui_registers_nothing_and_reads_this_process():
    probe = _probe()
    assert probe.NODE_CLASS_MAPPINGS == {}
    peaks = probe.Peaks()
    with pytest.raises(RuntimeError, match="reset first"):
        peaks.read()
    first = peaks.reset()
    assert first["measure"] in (probe.VMHWM, probe.SAMPLED) and first["baseline_bytes"] > 0
    block = bytearray(64 * 2**20)  # 64 MiB, touched page by page: the peak must rise by about that much
    for i in range(0, len(block), 4096):
        block[i] = 1
    out = peaks.read()
    del block
    assert out["peak_bytes"] - out["baseline_bytes"] >= 60 * 2**20  # 64 MiB less a little that was resident


# ---------------------------------------------------------------------------------------------- files


def test_demo_cache_is_written_once_and_again_when_half_written(tmp_path, monkeypatch):
    from sspir_core.demo import native_models

    calls = []

    def fake_write(root, seed=0, overwrite=False):
        calls.append((Path(root), overwrite))
        (Path(root) / "checkpoints").mkdir(parents=True, exist_ok=True)

    monkeypatch.setattr(native_models, "write_native_demo_models", fake_write)
    root = native_models.cached_native_demo_models(tmp_path)
    assert root == tmp_path / f"native-demo-{native_models.CACHE_VERSION}" and (root / ".complete").is_file()
    assert native_models.cached_native_demo_models(tmp_path) == root and calls == [(root, True)]  # reused
    (root / ".complete").unlink()  # an interrupted writer leaves no marker: the set is written again, in full
    native_models.cached_native_demo_models(tmp_path)
    assert calls == [(root, True), (root, True)]


def test_user_files_are_used_as_given_and_must_exist(tmp_path):
    class Harness:  # the demo cache is never asked for when the three files are named
        @staticmethod
        def cache_root():
            raise AssertionError("demo cache used")

    paths = [tmp_path / n for n in ("v1-5.safetensors", "sspir.safetensors", "clip-vit-l.safetensors")]
    for p in paths:
        p.write_bytes(b"x")
    s = BenchSettings(native_checkpoint=str(paths[0]), native_sspir=str(paths[1]), native_clip_vision=str(paths[2]))
    files = native.bench_files(s, Harness)
    assert (files.checkpoint, files.sspir, files.clip_vision, files.demo) == (*paths, False)
    paths[1].unlink()
    with pytest.raises(InputError, match="sspir.safetensors does not exist"):
        native.bench_files(s, Harness)
