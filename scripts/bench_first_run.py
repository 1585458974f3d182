"""README's first command, timed: run_workflow.py with torch's default threads (the old server) against
``--threads 1`` (the default now), side by side, idle and with a CPU burner on one core beside it.

    .venv/bin/python scripts/bench_first_run.py --rounds 1 --workflow example_workflows/api/sspir_restore.json

Each round runs both settings, alternating which goes first, so they share the machine's load; every run
includes the server start. Prints each time, the ratio old/new and the machine's load average, and exits 1
when a new run takes longer than ``--target`` seconds (issue 27's goal: 60 s on 2 cores with another job beside it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {"old": ["--threads", "0"], "new": []}
"""old: torch's default threads (one per core), as the server ran before; new: ``--threads 1``, the default now."""
BURN = "while True: pass"


@contextlib.contextmanager
def burner(on: bool) -> Iterator[None]:
    """A busy loop on one core (another CPU job beside the run) while inside."""
    if not on:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", BURN])
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(10)


def run_once(workflow: Path, extra: list[str], work_dir: Path) -> float:
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "run_workflow.py"), str(workflow), "--work-dir", str(work_dir), *extra],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    elapsed = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"run_workflow.py {' '.join(extra)} failed:\n{proc.stderr[-3000:]}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workflow", type=Path, default=REPO / "example_workflows" / "api" / "sspir_restore.json")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--target", type=float, default=60.0, help="seconds a new run may take (loaded)")
    parser.add_argument("--modes", default="idle,loaded", help="idle, loaded (a busy loop on one core), or both")
    parser.add_argument("--work-dir", type=Path, default=REPO / "out" / "bench-first-run")
    parser.add_argument("--settings", default="old,new", help="old, new or both (old takes minutes when loaded)")
    args = parser.parse_args(argv)
    print(
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    worst_new = 0.0
    for mode in args.modes.split(","):
        times: dict[str, list[float]] = {name: [] for name in args.settings.split(",")}
        with burner(mode == "loaded"):
            for r in range(args.rounds):
                order = list(times) if r % 2 == 0 else list(reversed(times))
                for name in order:
                    load = os.getloadavg()[0]
                    t = run_once(args.workflow, SETTINGS[name], args.work_dir)
                    times[name].append(t)
                    print(f"{mode:6s} round {r + 1} {name:3s} {t:6.1f} s (load average before {load:.2f})", flush=True)
        best = {name: min(v) for name, v in times.items()}
        worst_new = max([worst_new, *times.get("new", [])])
        ratio = f", old/new {best['old'] / best['new']:.1f}x" if len(best) == 2 else ""
        print(f"{mode:6s} best: " + ", ".join(f"{k} {v:.1f} s" for k, v in best.items()) + ratio, flush=True)
    print(f"slowest new run {worst_new:.1f} s (target {args.target:.0f} s)")
    return 0 if worst_new <= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
