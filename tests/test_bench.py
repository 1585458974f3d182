"""Smoke test of `sspir bench` at toy size: the report's structure, never its speed (timings are machine noise)."""

from __future__ import annotations

import json

import pytest

from sspir_core.bench import memory, run, sampler
from sspir_core.bench import report as bench_report
from sspir_core.bench import settings as bench_settings
from sspir_core.cli import main


@pytest.fixture(scope="module")
def tiny_pipe():
    return bench_settings.build_bench_pipeline("tiny")


@pytest.mark.slow  # runs every bench part
def test_bench_parts_structure(tiny_pipe) -> None:
    settings = bench_settings.BenchSettings(
        config="tiny",
        size=64,
        steps=2,
        step_steps=1,
        repeats=1,
        sizes=(64, 128),
        memory_steps=1,
        tile=8,
        tile_overlap=2,
        vae_tile=64,
        ablate=True,
    )
    step = sampler.bench_step(tiny_pipe, settings)
    assert step["latent"] == [8, 8] and step["cfg_batch"] == 2
    assert step["ours_ms"] > 0 and step["baseline_ms"] > 0
    assert step["ratio"] == pytest.approx(step["ours_ms"] / step["baseline_ms"])
    assert step["plain_ms"] > 0 and len(step["plain_ms_all"]) == 1
    assert step["fast_ratio"] == pytest.approx(step["ours_ms_all"][0] / step["plain_ms_all"][0])
    assert set(step["toggled"]) == {"context_kv", "linear_projections", "shared_cfg_prefix"} | (
        {"kept_heap"} if step["kept_heap"] else set()
    )
    assert all(v > 0 for v in step["toggled"].values())

    priors = sampler.bench_priors(tiny_pipe, settings)
    assert set(priors["parts_ms"]) == {"text", "clip_refine", "processor", "vae_encode"}
    assert all(v > 0 for v in priors["parts_ms"].values()) and priors["run_measured"]
    assert priors["percent"] == pytest.approx(100 * priors["priors_ms"] / priors["run_ms"])

    rows = [memory.measure_memory(tiny_pipe, size, settings) for size in settings.sizes]
    assert [r["size_px"] for r in rows] == [64, 128] and all(r["peak_mib"] >= 0 for r in rows)

    estimated = sampler.bench_priors(
        tiny_pipe, bench_settings.BenchSettings(**{**settings.__dict__, "estimate_run": True}), step_ms=step["ours_ms"]
    )
    assert not estimated["run_measured"] and estimated["run_ms"] == pytest.approx(2 * step["ours_ms"])

    from sspir_core.bench.flops import restore_flops

    flops = restore_flops(tiny_pipe, 64, 2, 7.5, bench_settings.CAPTION)
    assert flops["step_flops"] > 0 and flops["image_flops"] == 2 * flops["step_flops"] + flops["once_flops"]

    result = {
        "config": "tiny",
        "dtype": "fp32",
        "env": bench_report.environment(tiny_pipe.device),
        "build_s": 0.0,
        "total_s": 1.0,
        "step": step,
        "priors": priors,
        "flops": flops,
        "memory": {
            "rows": rows,
            "tile": 8,
            "tile_overlap": 2,
            "vae_tile": 64,
            "steps": 1,
            "output_bits": 8,
            "ratio_sizes": [64, 128],
            "ratio": rows[1]["peak_mib"] / max(rows[0]["peak_mib"], 1e-9),
        },
    }
    result["summary"] = bench_report.summary_line(result)
    report = bench_report.format_report(result)
    assert "ms/step" in report and "priors / run" in report and "ratio 128/64" in report
    assert "per denoising step (ControlNet + UNet)" in report and "ours vs plain (median of paired repeats)" in report
    assert "time with shared_cfg_prefix off / with the defaults" in report
    assert "time with linear_projections on / with the defaults" in report
    summary = report.splitlines()[-1]
    assert summary == result["summary"] and "\n" not in summary
    assert "MFLOP/step" in summary and "128/64" in summary and "plain path" in summary and "(tensors)" in summary
    json.dumps(result)  # what --json writes


def test_cpu_tensor_peak_counts_live_bytes_allocated_during_the_call() -> None:
    """Hand count: 4 MB + 8 MB live together, then 2 MB after freeing the first; memory held before is not counted."""
    import torch

    held = [torch.empty(3_000_000, dtype=torch.float32)]  # 12 MB allocated before the call, freed inside it

    def work() -> int:
        held.pop()
        a = torch.empty(1_000_000, dtype=torch.float32)  # 4 MB
        b = torch.empty(2_000_000, dtype=torch.float32)  # 8 MB: 12 MB live
        del a
        c = torch.empty(500_000, dtype=torch.float32)  # 2 MB: 10 MB live
        return b.numel() + c.numel()

    result, peak = memory.cpu_tensor_peak(work)
    assert result == 2_500_000
    assert peak is not None and 12_000_000 <= peak < 12_000_000 + 64 * 1024  # small bookkeeping tensors only


@pytest.mark.slow  # memory runs in child processes
def test_memory_methods_measure_the_same_restore(tiny_pipe) -> None:
    settings = bench_settings.BenchSettings(
        config="tiny", sizes=(128,), memory_steps=1, tile=8, tile_overlap=2, vae_tile=64
    )
    tensors = memory.measure_memory(tiny_pipe, 128, settings)
    again = memory.measure_memory(tiny_pipe, 128, settings)
    assert tensors["measure"] == "tensors" and "tensor bytes" in tensors["method"] and tensors["peak_mib"] > 0
    assert again["peak_mib"] == tensors["peak_mib"]  # repeatable to the byte, unlike RSS
    rss = memory.measure_memory(
        tiny_pipe, 128, bench_settings.BenchSettings(**{**settings.__dict__, "memory_method": "rss"})
    )
    assert rss["measure"] == "rss" and "RSS" in rss["method"]
    with pytest.raises(ValueError, match="memory_method"):
        memory.measure_memory(
            tiny_pipe, 128, bench_settings.BenchSettings(**{**settings.__dict__, "memory_method": "vms"})
        )


def test_cli_offers_the_memory_methods_the_bench_has() -> None:
    import argparse

    from sspir_core.cli import bench as cli_bench

    parser = argparse.ArgumentParser()
    cli_bench.add_parser(parser.add_subparsers())
    args = parser.parse_args(["bench"])
    assert args.memory_method == bench_settings.BenchSettings().memory_method
    action = next(
        a for a in parser._subparsers._group_actions[0].choices["bench"]._actions if a.dest == "memory_method"
    )
    assert tuple(action.choices) == memory.MEMORY_METHODS


@pytest.mark.slow  # a child process restore
def test_memory_child_prints_one_json_line(capsys) -> None:
    assert (
        memory._child_main(
            [
                "--_memory-child",
                "64",
                "--config",
                "tiny",
                "--memory-steps",
                "1",
                "--tile",
                "8",
                "--tile-overlap",
                "2",
                "--vae-tile",
                "64",
            ]
        )
        == 0
    )
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["size_px"] == 64 and row["models_mib"] > 0


def test_sd15_without_cuda_fails_clearly(capsys, monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # same answer on GPU machines
    assert main(["bench", "--config", "sd15"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert main(["bench", "--device", "cuda", "--config", "tiny"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_cpu_memory_run_builds_no_models_in_the_parent(monkeypatch) -> None:
    """Each size is measured in a child that builds its own models; the parent holding them too wasted GBs."""

    def no_build(*a, **k):
        raise AssertionError("the parent built the models")

    fake_rows = [{"size_px": 64, "peak_mib": 1.0, "models_mib": 9.0, "method": "m", "seconds": 0.1}]
    monkeypatch.setattr(run, "build_bench_pipeline", no_build)
    monkeypatch.setattr(
        run,
        "bench_memory",
        lambda settings, pipe: {
            "rows": fake_rows,
            "tile": 8,
            "tile_overlap": 2,
            "vae_tile": 64,
            "steps": 1,
            "output_bits": 8,
            "ratio_sizes": None,
            "ratio": None,
            "pipe_was": pipe,
        },
    )
    seen = {}
    monkeypatch.setitem(
        bench_settings.EXTRA_PARTS,
        "extra",
        (lambda s, p: seen.setdefault("pipe", p) or {"n": 1}, lambda d: [f"extra part: {d}"]),
    )
    r = run.run_bench(bench_settings.BenchSettings(config="tiny"), ["memory", "extra"], log=lambda m: None)
    assert r["parent_built_models"] is False and r["memory"]["pipe_was"] is None and seen == {"pipe": None}
    assert "extra part:" in bench_report.format_report(r)
