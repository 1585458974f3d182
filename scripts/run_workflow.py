"""Run an API-format workflow headless in a real ComfyUI with this pack, and print the restored image.

    .venv/bin/python scripts/run_workflow.py example_workflows/api/sspir_restore.json

Starts ComfyUI (the pinned version fetched into a cache, or ``COMFYUI_DIR``) on 127.0.0.1 with this
pack in custom_nodes/ and the demo models (``sspir demo-models``, written on first use), copies the
input image into ComfyUI's input/ folder, queues the workflow, waits, prints the output files and
stops the server, also on Ctrl-C or an error. Exits 1 with the failing node's message.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# This checkout's sspir_core (the harness, the demo-model names), whatever is installed.
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(Path(__file__).resolve().parent))
import progress  # noqa: E402 (sits beside this script)

from sspir_core import host as comfyui  # noqa: E402

DEFAULT_THREADS = 1
"""Torch threads of the server: the demo models' small matrices gain nothing from more threads and lose much
when another job shares the cores (scripts/bench_first_run.py). Real weights on many free cores: raise it."""


def thread_env(threads: int) -> dict[str, str]:
    """The environment that sets torch's (OpenMP's and MKL's) thread count in the server; 0 = torch's default."""
    if threads <= 0:
        return {}
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def load_api_workflow(path: Path) -> dict:
    """Read an API-format workflow; a UI-format file gets a message naming the API twin."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: cannot read workflow {path}: {err}") from err
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        twin = path.parent / "api" / path.name
        hint = f" (its API twin: {twin})" if twin.is_file() else ""
        raise SystemExit(f"error: {path} is a UI-format workflow; this script runs API-format ones{hint}")
    if not isinstance(data, dict) or not all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        raise SystemExit(f"error: {path} is not an API-format ComfyUI workflow (node id -> class_type/inputs)")
    return data


def set_input_image(prompt: dict, name: str) -> int:
    """Point every LoadImage node at ``name`` (a file in ComfyUI's input folder); returns how many."""
    count = 0
    for node in prompt.values():
        if node["class_type"] == "LoadImage":
            node["inputs"]["image"] = name
            count += 1
    return count


def demo_models(models_dir: Path, python: str, native: bool = False) -> Path:
    """The demo models folder, written by ``sspir demo-models`` (``--native`` for the native route's
    ComfyUI-loadable set, about 1.3 GB) when any file is missing."""
    from sspir_core.demo.model_files import DEMO_FILES
    from sspir_core.demo.native_models import NATIVE_FILES

    files = [*DEMO_FILES.values(), *(NATIVE_FILES.values() if native else ())]
    if all((models_dir / folder / name).exists() for folder, name in files):
        return models_dir
    flag = ["--native"] if native else []
    print(f"writing demo models into {models_dir} (sspir demo-models {' '.join(flag)})", file=sys.stderr)
    subprocess.run([python, "-m", "sspir_core.cli", "demo-models", str(models_dir), *flag], check=True, cwd=REPO)
    return models_dir


def start_progress(server: comfyui.ComfyServer, prompt: dict) -> progress.ProgressWatcher | None:
    """Live progress on stderr while the prompt runs; None (and a note) when the websocket is not available."""
    display = {}
    for class_type in {node["class_type"] for node in prompt.values()}:
        try:
            display[class_type] = server.object_info(class_type)[class_type].get("display_name") or class_type
        except (comfyui.ComfyUIError, OSError, KeyError):
            display[class_type] = class_type
    view = progress.ProgressView(progress.node_names(prompt, display), sys.stderr, progress.is_tty(sys.stderr))
    watcher = progress.ProgressWatcher(server.url, server.client_id, view)
    if not watcher.start():
        print(f"note: no live progress ({watcher.error or 'no websocket'}); see {server.log_path}", file=sys.stderr)
        return None
    return watcher


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "workflow", type=Path, help="API-format workflow JSON (e.g. example_workflows/api/sspir_restore.json)"
    )
    parser.add_argument(
        "--image", type=Path, default=REPO / "examples" / "astronaut_lq.png", help="input image for LoadImage"
    )
    parser.add_argument(
        "--models",
        type=Path,
        default=None,
        help="ComfyUI-layout models folder (default: demo models in out/demo-models, written if missing)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=REPO / "out" / "comfyui",
        help="ComfyUI base directory for this run: custom_nodes/, input/, output/, user/, the log "
        "(default: out/comfyui)",
    )
    parser.add_argument("--port", type=int, default=None, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the workflow")
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help=(
            f"torch threads in the server (default {DEFAULT_THREADS}, fastest for the demo models; 0 = torch's "
            "default, one per core: for real weights on free cores)"
        ),
    )
    args = parser.parse_args(argv)

    # A plain `kill` stops ComfyUI too (SystemExit unwinds through the server's context manager).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    prompt = load_api_workflow(args.workflow)
    if not args.image.is_file():
        raise SystemExit(f"error: --image {args.image} does not exist")
    if set_input_image(prompt, args.image.name) == 0:
        print("note: the workflow has no LoadImage node; --image is not used", file=sys.stderr)
    try:
        comfy_dir = comfyui.ensure()
        python = comfyui.comfyui_python(comfy_dir)
        native = any(node.get("class_type") == "SSPIRPatchLoader" for node in prompt.values())
        models = args.models or demo_models(REPO / "out" / "demo-models", sys.executable, native=native)
        if not models.is_dir():
            raise SystemExit(f"error: --models {models} is not a folder")
        server = comfyui.ComfyServer(
            args.work_dir,
            models_dir=models,
            comfy_dir=comfy_dir,
            python=python,
            port=args.port,
            env=thread_env(args.threads),
        )
        server.input_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(args.image, server.input_dir / args.image.name)
        t0 = time.monotonic()
        print(f"starting ComfyUI ({comfy_dir}) on 127.0.0.1; log: {server.log_path}", file=sys.stderr)
        with server:
            print(
                f"ComfyUI ready at {server.url} ({time.monotonic() - t0:.1f} s); queueing {args.workflow}",
                file=sys.stderr,
            )
            t1 = time.monotonic()
            watcher = start_progress(server, prompt)
            try:
                entry = server.run(prompt, timeout=args.timeout)
            finally:
                if watcher is not None:
                    watcher.stop()
            saved = server.output_files(entry, kind="output")
            print(
                f"workflow done in {time.monotonic() - t1:.1f} s (total {time.monotonic() - t0:.1f} s)", file=sys.stderr
            )
    except comfyui.ComfyUIError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; ComfyUI stopped", file=sys.stderr)
        return 130
    if not saved:
        print("error: the workflow finished but saved no image (does it have a SaveImage node?)", file=sys.stderr)
        return 1
    for path in saved:
        print(f"restored image: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
