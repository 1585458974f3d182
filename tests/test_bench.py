"""Smoke test of `sspir bench` at toy size: the report's structure, never its speed (timings are machine noise)."""

from __future__ import annotations

import json

import pytest

from sspir_core import bench
from sspir_core.cli import main


@pytest.fixture(scope="module")
def tiny_pipe():
    return bench.build_bench_pipeline("tiny")


def test_bench_parts_structure(tiny_pipe) -> None:
    settings = bench.BenchSettings(config="tiny", size=64, steps=2, step_steps=1, repeats=1, sizes=(64, 128),
                                   memory_steps=1, tile=8, tile_overlap=2, vae_tile=64)
    step = bench.bench_step(tiny_pipe, settings)
    assert step["latent"] == [8, 8] and step["cfg_batch"] == 2
    assert step["ours_ms"] > 0 and step["baseline_ms"] > 0
    assert step["ratio"] == pytest.approx(step["ours_ms"] / step["baseline_ms"])

    priors = bench.bench_priors(tiny_pipe, settings)
    assert set(priors["parts_ms"]) == {"text", "clip_refine", "processor", "vae_encode"}
    assert all(v > 0 for v in priors["parts_ms"].values()) and priors["run_measured"]
    assert priors["percent"] == pytest.approx(100 * priors["priors_ms"] / priors["run_ms"])

    rows = [bench.measure_memory(tiny_pipe, size, settings) for size in settings.sizes]
    assert [r["size_px"] for r in rows] == [64, 128] and all(r["peak_mib"] >= 0 for r in rows)

    estimated = bench.bench_priors(tiny_pipe, bench.BenchSettings(**{**settings.__dict__, "estimate_run": True}),
                                   step_ms=step["ours_ms"])
    assert not estimated["run_measured"] and estimated["run_ms"] == pytest.approx(2 * step["ours_ms"])

    result = {"config": "tiny", "dtype": "fp32", "env": bench.environment(tiny_pipe.device), "build_s": 0.0,
              "total_s": 1.0, "step": step, "priors": priors,
              "memory": {"rows": rows, "tile": 8, "tile_overlap": 2, "vae_tile": 64, "steps": 1,
                         "ratio_sizes": [64, 128], "ratio": rows[1]["peak_mib"] / max(rows[0]["peak_mib"], 1e-9)}}
    report = bench.format_report(result)
    assert "ms/step" in report and "priors / run" in report and "ratio 128/64" in report
    json.dumps(result)  # what --json writes


def test_memory_child_prints_one_json_line(capsys) -> None:
    assert bench._child_main(["--_memory-child", "64", "--config", "tiny", "--memory-steps", "1",
                              "--tile", "8", "--tile-overlap", "2", "--vae-tile", "64"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["size_px"] == 64 and row["models_mib"] > 0


def test_sd15_without_cuda_fails_clearly(capsys, monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # same answer on GPU machines
    assert main(["bench", "--config", "sd15"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert main(["bench", "--device", "cuda", "--config", "tiny"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
