"""`sspir bench --parts native` for real: both routes in their own ComfyUI servers at the smallest size."""

from __future__ import annotations

import pytest

from sspir_core.bench import native
from sspir_core.bench.settings import BenchSettings

pytestmark = pytest.mark.comfyui


def test_native_part_measures_both_routes(comfy_dir):
    """8 px LQ x4 -> 32 px, 2 steps, one timed image per route after the warm-up, both servers up (the CPU's
    default order); one thread per server: with two, a neighbour on the shared cores made it 5x slower."""
    settings = BenchSettings(device="cpu", dtype="fp32", native_size=32, native_steps=2, repeats=1, threads=1)
    result = native.bench_native(settings)
    assert (result["input_px"], result["size_px"], result["demo_files"], result["order"]) == (
        8,
        32,
        True,
        "interleaved",
    )
    weights = sum(native.Path(p).stat().st_size for p in result["files"].values())
    for route in native.ROUTES:
        r = result[route]
        assert r["output_px"] == [[32, 32], [32, 32]], route  # warm-up and timed image: 4 x the 8 px LQ
        assert r["timing"].startswith("server") and r["s_per_image"] > 0 and r["first_s"] > 0
        # the server's own execution time lies inside our queue -> done wall time (ms timestamps: 2 ms rounding)
        assert all(s <= w + 0.002 for s, w in zip(r["seconds"], r["wall_seconds"], strict=True)), r
        assert r["measure"].startswith("VmHWM")
        assert r["peak_mib"] >= r["baseline_mib"] > 0 and r["peak_above_mib"] >= 0
        # after the warm-up every weight of the three files is resident (as fp16 or cast to fp32): the absolute
        # peak cannot be below the files' size, whatever else the process holds
        assert r["peak_mib"] * native.MIB > weights, (route, r["peak_mib"], weights / native.MIB)
    assert result["time_ratio"] == pytest.approx(result["native"]["s_per_image"] / result["reference"]["s_per_image"])
    print("\n" + "\n".join(native.native_lines(result)))
