"""`sspir bench --parts native`: the native route against the reference route in real ComfyUI servers.

Both routes restore the same images from the same files in ComfyUI, side by side in one bench run:

- **native**: Load Checkpoint + SSP-IR Patch Loader + Apply SSP-IR + SSP-IR Text Encode + SSP-IR LQ Latent,
  sampled by ComfyUI's KSampler (``ddpm`` with ``ddim_uniform``: the paper's timesteps), VAE Decode, Colour Fix,
  with PGA Sampler's default latent tiles (Apply SSP-IR's tile 96/32);
- **reference**: SSP-IR Model Loader + CLIP Vision Loader + CLIP Image Embed + Structure Processor + PGA Sampler
  (``ddpm``, start ``lq``), our own diffusers models and sampler loop, with the node's default tiling.

sspir_core never imports ComfyUI, so this part drives ComfyUI server processes through the harness
(:mod:`sspir_core.host`). Each route gets a fresh server (one route's resident models never count in the other's
peak) with the bench probe (:mod:`sspir_core.host.bench_probe`) in its custom_nodes; on the CPU both servers are up
and their prompts alternate, on CUDA they run one after the other (see :func:`bench_native`). Per route: one
warm-up prompt (loads the models; its time is reported apart), then ``repeats`` timed prompts, each on its own
LQ image and caption (as a batch of real photos would be), so ComfyUI's output cache only answers for the loaders.

- **s/image**: the server's own execution timestamps of each prompt (history ``execution_start`` ->
  ``execution_success``, ms resolution), the median of the timed prompts; the wall time queue -> done (polled
  every 0.2 s) is kept beside it and used only where a history entry lacks the timestamps.
- **peak memory**: reset before each timed prompt and read after it, through the probe: CUDA
  ``max_memory_allocated`` (VRAM), or the server process's VmHWM on the CPU (peak RSS). Reported above the
  baseline at the reset (after the warm-up: what one image costs beyond the resident models) and absolute.

Sizes: the output is ``native_size`` px square from a ``native_size / 4`` px LQ (x4). Default: a toy run on the
CPU (16 -> 64 px, 4 steps, the native demo files: random weights, a 320-wide SD1.5 UNet with full-size text
encoder, VAE and CLIP vision), or 512 -> 2048 px with 50 steps on CUDA, on the SD1.5 checkpoint, SSP-IR weights and
CLIP vision files the user names (the demo files when none are named).
"""

from __future__ import annotations

import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import InputError, SSPIRError
from ..native.text import MIXED_LENGTHS
from ..restore.options import RestoreOptions
from .settings import CAPTION, EXTRA_PARTS, EXTRA_SUMMARIES, BenchSettings

ROUTES = ("native", "reference")
ORDERS = ("interleaved", "sequential")  # default: interleaved on the CPU, sequential on CUDA (see bench_native)
ORDER_WORDS = {"interleaved": "both up, prompts alternating", "sequential": "one after the other"}
DEFAULTS = {"cpu": (64, 4), "cuda": (2048, 50)}  # (output px, steps) when the settings leave them unset
UPSCALE = 4
SETUP_HINT = "run `bash scripts/setup.sh --comfyui` in a checkout of the pack (ComfyUI-SSPIR)"
PROBE_FOLDER = "sspir_bench_probe"  # its folder in the bench server's custom_nodes
PROMPT_TIMEOUT_S = 3600.0
PROCESSOR_TILE = 1024  # Apply SSP-IR's default (nodes/native_apply.py)
REFERENCE = RestoreOptions()  # PGA Sampler's widget defaults: tile 96/32, VAE tile 1024 (the shipped workflows)
MIB = 2**20


class NativeBenchError(SSPIRError):
    """The native part cannot run here (no ComfyUI harness) or a bench prompt failed."""


@dataclass
class NativeFiles:
    """The three files both routes load, and whether they are the random demo set."""

    checkpoint: Path  # SD1.5 single-file checkpoint (ComfyUI's Load Checkpoint and our Model Loader)
    sspir: Path  # SSP-IR weights (Patch Loader and Model Loader)
    clip_vision: Path  # CLIP ViT-L vision (ComfyUI's CLIP Vision Loader and ours)
    demo: bool


def native_plan(settings: BenchSettings) -> dict[str, Any]:
    """Output px, LQ px, steps and order of the run: the settings' own, else the device's defaults
    (:data:`DEFAULTS`; order interleaved on the CPU, sequential on CUDA)."""
    cuda = settings.device.startswith("cuda")
    size_default, steps_default = DEFAULTS["cuda" if cuda else "cpu"]
    size = settings.native_size or size_default
    steps = settings.native_steps or steps_default
    if size < 32 or size % 32:
        raise InputError(
            f"native size must be a multiple of 32 and >= 32 (its LQ is size/{UPSCALE} px, a multiple of 8), got {size}"
        )
    if settings.native_order not in (None, *ORDERS):
        raise InputError(f"native order must be one of {', '.join(ORDERS)}, got {settings.native_order!r}")
    if steps < 1 or settings.repeats < 1:
        raise InputError(f"native steps and repeats must be >= 1, got {steps} and {settings.repeats}")
    given = (settings.native_checkpoint, settings.native_sspir, settings.native_clip_vision)
    if any(given) and not all(given):
        raise InputError(
            "name all three native bench files (--native-checkpoint, --native-sspir, "
            "--native-clip-vision) or none (then the random native demo files are used)"
        )
    return {
        "size_px": size,
        "input_px": size // UPSCALE,
        "steps": steps,
        "order": settings.native_order or ("sequential" if cuda else "interleaved"),
    }


# ---------------------------------------------------------------------------------------------- ComfyUI side


def load_harness(folder: Path | None = None) -> ModuleType:
    """The ComfyUI harness (:mod:`sspir_core.host`), checked to have a ComfyUI in ``folder`` (default: the one it
    runs, ``COMFYUI_DIR`` or the cached 0.3.75) with its requirements installed."""
    from .. import host as module

    folder = folder or module.comfyui_dir()
    if not (folder / "main.py").is_file():
        raise NativeBenchError(f"no ComfyUI in {folder}: {SETUP_HINT} (or set COMFYUI_DIR to a ComfyUI checkout)")
    missing = module.missing_requirements(folder)
    if missing:
        raise NativeBenchError(
            f"{module.comfyui_python(folder)} lacks ComfyUI's requirements ({', '.join(missing)}): {SETUP_HINT}"
        )
    return module


def bench_files(settings: BenchSettings, harness: ModuleType) -> NativeFiles:
    """The user's three files (all named or none), else the native demo set (cached under the harness cache)."""
    given = (settings.native_checkpoint, settings.native_sspir, settings.native_clip_vision)
    if all(given):  # all or none: checked by native_plan
        paths = [Path(p).expanduser().resolve() for p in given]  # type: ignore[arg-type]
        for p in paths:
            if not p.is_file():
                raise InputError(f"native bench file {p} does not exist")
        return NativeFiles(*paths, demo=False)
    from ..demo.native_models import NATIVE_FILES, cached_native_demo_models

    root = cached_native_demo_models(harness.cache_root())
    paths = [root / folder / name for folder, name in (NATIVE_FILES[k] for k in ("sd", "sspir", "clip_vision"))]
    return NativeFiles(*paths, demo=True)


def server_args(settings: BenchSettings) -> tuple[bool, tuple[str, ...], dict[str, str]]:
    """(run on the CPU, extra ComfyUI flags, environment): the UNet and VAE in the bench dtype, the CUDA device
    asked for, and ``--threads`` as the servers' OpenMP/MKL threads (ComfyUI has no flag for it; torch reads these
    at start). On shared cores one thread is steadiest: with two, a process that takes one core stalls every
    parallel region of the other (single 64 px images here took 3 s or 30 s depending on the neighbours)."""
    cuda = settings.device.startswith("cuda")
    flags = [f"--{settings.dtype}-unet", f"--{settings.dtype}-vae"]
    index = settings.device.partition(":")[2]
    if cuda and index:
        flags += ["--cuda-device", index]  # ComfyUI then sees that card alone, as cuda:0
    env = {k: str(settings.threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")} if settings.threads else {}
    return not cuda, tuple(flags), env


# ---------------------------------------------------------------------------------------------- graphs


def native_graph(
    image: str, caption: str, files: NativeFiles, *, steps: int, cfg: float, seed: int, dtype: str, prefix: str
) -> dict[str, Any]:
    """The native route in API format (the shipped sspir_native workflow with a typed caption)."""
    return {
        "img": {"class_type": "LoadImage", "inputs": {"image": image}},
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": files.checkpoint.name}},
        "cv": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": files.clip_vision.name}},
        "patch": {"class_type": "SSPIRPatchLoader", "inputs": {"sspir_weights": files.sspir.name, "dtype": dtype}},
        "lat": {
            "class_type": "SSPIRLQLatent",
            "inputs": {
                "image": ["img", 0],
                "vae": ["ckpt", 2],
                "upscale": float(UPSCALE),
                "width": 0,
                "height": 0,
                "vae_tile": REFERENCE.vae_tile,
            },
        },
        "txt": {
            "class_type": "SSPIRTextEncode",
            "inputs": {
                "clip": ["ckpt", 1],
                "caption": caption,
                "negative_prompt": "",
                "max_chunks": REFERENCE.max_chunks,
                "mixed_lengths": MIXED_LENGTHS[0],
            },
        },
        "apply": {
            "class_type": "SSPIRApply",
            "inputs": {
                "model": ["ckpt", 0],
                "sspir_patch": ["patch", 0],
                "clip_vision": ["cv", 0],
                "image": ["lat", 1],
                "strength": 1.0,
                "start_percent": 0.0,
                "end_percent": 1.0,
                "start": "paper",
                "processor_tile": PROCESSOR_TILE,
                "tile": REFERENCE.tile,
                "tile_overlap": REFERENCE.tile_overlap,
            },
        },
        "smp": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["apply", 0],
                "seed": seed,
                "steps": steps,
                "cfg": cfg,
                "sampler_name": "ddpm",
                "scheduler": "ddim_uniform",
                "positive": ["txt", 0],
                "negative": ["txt", 1],
                "latent_image": ["lat", 0],
                "denoise": 1.0,
            },
        },
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["smp", 0], "vae": ["ckpt", 2]}},
        "fix": {
            "class_type": "SSPIRColorFix",
            "inputs": {"image": ["dec", 0], "reference": ["lat", 1], "method": REFERENCE.color_fix},
        },
        "save": {"class_type": "SaveImage", "inputs": {"images": ["fix", 0], "filename_prefix": prefix}},
    }


def reference_graph(
    image: str, caption: str, files: NativeFiles, *, steps: int, cfg: float, seed: int, dtype: str, prefix: str
) -> dict[str, Any]:
    """The reference route (PGA Sampler) in API format on the same files; models stay loaded between prompts
    (cache "on device", as ComfyUI keeps the native route's models while memory allows)."""
    size = {"upscale": float(UPSCALE), "width": 0, "height": 0}
    return {
        "img": {"class_type": "LoadImage", "inputs": {"image": image}},
        "m": {
            "class_type": "SSPIRModelLoader",
            "inputs": {
                "base_model": files.checkpoint.name,
                "sspir_weights": files.sspir.name,
                "base": "auto",
                "device": "auto",
                "dtype": dtype,
                "offload": "auto",
                "cache": "on device",
            },
        },
        "cv": {"class_type": "SSPIRClipVisionLoader", "inputs": {"clip_name": files.clip_vision.name}},
        "emb": {
            "class_type": "SSPIRClipImageEmbed",
            "inputs": {"sspir_model": ["m", 0], "clip_vision": ["cv", 0], "image": ["img", 0], **size},
        },
        "st": {
            "class_type": "SSPIRStructureProcessor",
            "inputs": {"sspir_model": ["m", 0], "image": ["img", 0], **size},
        },
        "smp": {
            "class_type": "SSPIRSampler",
            "inputs": {
                "sspir_model": ["m", 0],
                "image": ["img", 0],
                "image_embed": ["emb", 0],
                "structure": ["st", 0],
                "caption": caption,
                "negative_prompt": "",
                "seed": seed,
                "steps": steps,
                "cfg": cfg,
                "scheduler": REFERENCE.scheduler,
                "start": REFERENCE.start,
                "conditioning_scale": 1.0,
                **size,
                "tile": REFERENCE.tile,
                "tile_overlap": REFERENCE.tile_overlap,
                "vae_tile": REFERENCE.vae_tile,
                "color_fix": REFERENCE.color_fix,
            },
        },
        "save": {"class_type": "SaveImage", "inputs": {"images": ["smp", 0], "filename_prefix": prefix}},
    }


GRAPHS = {"native": native_graph, "reference": reference_graph}
SAMPLER_NODE = "smp"  # must run in every timed prompt (else the output cache answered and nothing was measured)


# ---------------------------------------------------------------------------------------------- one route


def _message(entry: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for name, data in entry.get("status", {}).get("messages", []):
        if name == kind:
            return data
    return None


def execution_seconds(entry: dict[str, Any]) -> float | None:
    """Seconds from ``execution_start`` to ``execution_success`` of a history entry (ComfyUI's ms timestamps);
    None when either is missing (a failed prompt, or a ComfyUI that records no timestamps)."""
    start, done = _message(entry, "execution_start"), _message(entry, "execution_success")
    if not start or not done or "timestamp" not in start or "timestamp" not in done:
        return None
    return (done["timestamp"] - start["timestamp"]) / 1000


def cached_nodes(entry: dict[str, Any]) -> list[str]:
    """Node ids ComfyUI answered from its output cache in this prompt."""
    return list((_message(entry, "execution_cached") or {}).get("nodes", []))


def _write_lq(folder: Path, index: int, size: int, seed: int) -> str:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed + index)
    name = f"bench_lq_{index}.png"
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / name)
    return name


def _models_folder(folder: Path, files: NativeFiles) -> Path:
    """A ComfyUI models folder of links to the three files (their names are what the graphs ask for)."""
    for sub, path in (("checkpoints", files.checkpoint), ("sspir", files.sspir), ("clip_vision", files.clip_vision)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        link = folder / sub / path.name
        try:
            link.symlink_to(path)
        except OSError:  # no symlinks (Windows without developer mode)
            shutil.copy2(path, link)
    return folder


class RouteRun:
    """One route's server (fresh, with the probe) and its prompts: ``prompt(0)`` is the warm-up."""

    def __init__(
        self,
        route: str,
        harness: ModuleType,
        files: NativeFiles,
        plan: dict[str, Any],
        settings: BenchSettings,
        work: Path,
        models: Path,
        log: Any,
    ) -> None:
        cpu, flags, env = server_args(settings)
        self.route, self.harness, self.files, self.plan, self.settings, self.log = (
            route,
            harness,
            files,
            plan,
            settings,
            log,
        )
        self.server = harness.ComfyServer(
            work / route, models_dir=models, comfy_dir=harness.comfyui_dir(), extra_args=flags, cpu=cpu, env=env
        )
        probe = self.server.work_dir / "custom_nodes" / PROBE_FOLDER
        probe.mkdir(parents=True, exist_ok=True)
        from ..host import bench_probe

        shutil.copy2(bench_probe.__file__, probe / "__init__.py")
        self.server.input_dir.mkdir(parents=True, exist_ok=True)
        self.images = [
            _write_lq(self.server.input_dir, i, plan["input_px"], settings.seed) for i in range(settings.repeats + 1)
        ]
        self.rows: list[dict[str, Any]] = []
        self.start_s = 0.0

    def __enter__(self) -> RouteRun:
        t0 = time.perf_counter()
        try:
            self.server.start()
        except self.harness.ComfyUIError as err:
            raise self.harness.ComfyUIError(f"{self.route} route: the server did not start: {err}") from err
        self.start_s = time.perf_counter() - t0
        self.log(f"  {self.route}: ComfyUI up in {self.start_s:.1f} s ({self.server.url}, log {self.server.log_path})")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()

    def prompt(self, i: int) -> None:
        server, route = self.server, self.route
        prompt = GRAPHS[route](
            self.images[i],
            f"{CAPTION}, picture {i}",
            self.files,
            steps=self.plan["steps"],
            cfg=self.settings.cfg,
            seed=self.settings.seed,
            dtype=self.settings.dtype,
            prefix=f"bench_{route}_{i}",
        )
        timed = i > 0  # prompt 0 is the warm-up: it loads the models
        if timed:
            reset = server.get("/sspir_bench/reset")
        t1 = time.perf_counter()
        entry = server.wait(server.queue(prompt), PROMPT_TIMEOUT_S)
        wall = time.perf_counter() - t1
        error = self.harness.prompt_error(entry)
        if error:
            raise self.harness.ComfyUIError(f"{route} route, prompt {i}: {error}")
        if SAMPLER_NODE in cached_nodes(entry):
            raise NativeBenchError(f"{route} prompt {i}: ComfyUI answered the sampler from its cache")
        row = {"server_s": execution_seconds(entry), "wall_s": wall}
        if timed:
            peak = server.get("/sspir_bench/peak")
            row.update(
                measure=peak["measure"],
                baseline_bytes=reset["baseline_bytes"],
                peak_bytes=peak["peak_bytes"],
                reserved_peak_bytes=peak.get("reserved_peak_bytes"),
            )
        outputs = server.output_files(entry, kind="output")
        if outputs:
            from PIL import Image

            with Image.open(outputs[0]) as im:
                row["output_px"] = list(im.size)
        self.rows.append(row)
        self.log(f"  {route}: image {i}{'' if timed else ' (warm-up)'} {row['server_s'] or wall:.2f} s")

    def summary(self) -> dict[str, Any]:
        return summarise_route(self.rows, self.start_s)


def round_order(i: int, n: int) -> list[int]:
    """Which run goes first in round ``i``: each round starts one later, so no route always follows the other."""
    return [*range(i % n, n), *range(i % n)]


def summarise_route(rows: list[dict[str, Any]], start_s: float = 0.0) -> dict[str, Any]:
    """One route's figures from its prompts' rows (row 0 the warm-up): medians of time, maxima of memory."""
    first, timed = rows[0], rows[1:]
    server = all(r["server_s"] is not None for r in rows)
    key = "server_s" if server else "wall_s"
    out: dict[str, Any] = {
        "timing": "server execution_start -> execution_success" if server else "wall time queue -> done",
        "s_per_image": statistics.median(r[key] for r in timed),
        "seconds": [r[key] for r in timed],
        "wall_seconds": [r["wall_s"] for r in timed],
        "first_s": first[key],
        "start_s": start_s,
        "measure": timed[0]["measure"],
        "peak_above_mib": max(r["peak_bytes"] - r["baseline_bytes"] for r in timed) / MIB,
        "peak_mib": max(r["peak_bytes"] for r in timed) / MIB,
        "baseline_mib": min(r["baseline_bytes"] for r in timed) / MIB,
        "output_px": [r.get("output_px") for r in rows],
    }
    reserved = [r["reserved_peak_bytes"] for r in timed if r.get("reserved_peak_bytes") is not None]
    if reserved:
        out["reserved_peak_mib"] = max(reserved) / MIB
    return out


def bench_native(settings: BenchSettings, pipe: object = None) -> dict[str, Any]:
    """Both routes, one fresh ComfyUI server each, on the same images, files, steps, CFG and seed.

    ``interleaved`` (the CPU default) keeps both servers up and alternates their prompts, so other programs on
    shared cores slow both routes alike; peaks stay per route, since each server is its own process (VmHWM and
    the CUDA allocator's statistics are per process). ``sequential`` (the CUDA default) runs one server after
    the other, so the idle route's resident models never take VRAM that ComfyUI's model management could use.
    """

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    plan = native_plan(settings)
    harness = load_harness()
    if not all((settings.native_checkpoint, settings.native_sspir, settings.native_clip_vision)):
        log(f"  files: the native demo set under {harness.cache_root()} (written on first use: about 1.3 GB, a minute)")
    files = bench_files(settings, harness)

    result: dict[str, Any] = {
        **plan,
        "cfg": settings.cfg,
        "seed": settings.seed,
        "dtype": settings.dtype,
        "device": settings.device,
        "repeats": settings.repeats,
        "server_threads": settings.threads,
        "comfyui": harness.read_version(harness.comfyui_dir()) or "unknown",
        "demo_files": files.demo,
        "files": {k: str(getattr(files, k)) for k in ("checkpoint", "sspir", "clip_vision")},
        "reference_tiling": [REFERENCE.tile, REFERENCE.tile_overlap, REFERENCE.vae_tile],
    }
    work = Path(tempfile.mkdtemp(prefix="sspir-bench-native-"))
    models = _models_folder(work / "models", files)
    runs = [RouteRun(route, harness, files, plan, settings, work, models, log) for route in ROUTES]
    try:
        if (
            plan["order"] == "sequential"
        ):  # one server at a time: the other route's resident models never share the card
            for run in runs:
                with run:
                    for i in range(settings.repeats + 1):
                        run.prompt(i)
        else:  # both servers up, one prompt at a time, alternating: background load hits both routes alike
            with contextlib.ExitStack() as stack:
                for run in runs:
                    stack.enter_context(run)
                for i in range(settings.repeats + 1):
                    for k in round_order(i, len(runs)):
                        runs[k].prompt(i)
    except harness.ComfyUIError as err:  # the folders (logs, inputs) stay for a look
        raise NativeBenchError(f"{err}\n(the bench servers' folders are kept in {work})") from err
    shutil.rmtree(work, ignore_errors=True)
    for run in runs:
        result[run.route] = run.summary()
    result.update(route_ratios(result["native"], result["reference"]))
    return result


def route_ratios(native: dict[str, Any], reference: dict[str, Any]) -> dict[str, float | None]:
    """native / reference of s/image, of the peak above the baseline and of the absolute peak (None over 0)."""

    def ratio(key: str) -> float | None:
        return native[key] / reference[key] if reference[key] > 0 else None

    return {
        "time_ratio": ratio("s_per_image"),
        "peak_ratio": ratio("peak_above_mib"),
        "abs_peak_ratio": ratio("peak_mib"),
    }


# ---------------------------------------------------------------------------------------------- report


def _x(v: float | None) -> str:
    return "n/a" if v is None else f"x{v:.2f}"


def native_lines(r: dict[str, Any]) -> list[str]:
    memory = "VRAM" if r["device"].startswith("cuda") else "RAM"
    files = "native demo files (random weights)" if r["demo_files"] else Path(r["files"]["checkpoint"]).name
    tile, overlap, vae_tile = r["reference_tiling"]
    lines = [
        f"native route vs reference (PGA Sampler) in ComfyUI {r['comfyui']}: {r['input_px']} -> {r['size_px']} px, "
        f"{r['steps']} steps, CFG {r['cfg']:g}, {r['dtype']}, {files}; one server per route"
        f"{'' if not r.get('server_threads') else ' (' + str(r['server_threads']) + ' thread(s) each)'}, "
        f"{ORDER_WORDS[r['order']]}; median of {r['repeats']} image(s) after a warm-up",
        f"   {'route':10s} {'s/image':>9s} {'first image':>12s} {'peak above idle':>16s} {'absolute peak':>14s}",
    ]
    for route in ROUTES:
        x = r[route]
        lines.append(
            f"   {route:10s} {x['s_per_image']:8.2f}s {x['first_s']:11.2f}s {x['peak_above_mib']:12.1f} MiB "
            f"{x['peak_mib']:10.1f} MiB"
        )
    lines += [
        f"   native/reference: time {_x(r['time_ratio'])}, peak above idle {_x(r['peak_ratio'])}, "
        f"absolute peak {_x(r['abs_peak_ratio'])}",
        f"   time: {r['native']['timing']}; {memory}: {r['native']['measure']}, peak over each timed image, "
        "'idle' = after the warm-up (models resident)",
        f"   native: KSampler ddpm + ddim_uniform; reference: ddpm from the LQ latent; both latent tile "
        f"{tile}/{overlap}; VAE tile {vae_tile} px; first image includes loading the models",
    ]
    if "reserved_peak_mib" in r["native"]:
        lines.append(
            f"   torch reserved peak: native {r['native']['reserved_peak_mib']:.0f} MiB, reference "
            f"{r['reference']['reserved_peak_mib']:.0f} MiB"
        )
    return lines


def native_summary(r: dict[str, Any]) -> str:
    n, ref = r["native"], r["reference"]
    memory = "VRAM" if r["device"].startswith("cuda") else "RSS"
    files = "demo files" if r["demo_files"] else Path(r["files"]["checkpoint"]).name
    return (
        f"native vs reference ({files}; --config not used) {r['input_px']}->{r['size_px']}px {r['steps']} steps: "
        f"{n['s_per_image']:.2f} vs "
        f"{ref['s_per_image']:.2f} s/image ({_x(r['time_ratio'])}), {memory} peak +{n['peak_above_mib']:.0f} vs "
        f"+{ref['peak_above_mib']:.0f} MiB above idle ({n['peak_mib']:.0f} vs {ref['peak_mib']:.0f} MiB absolute)"
    )


EXTRA_PARTS["native"] = (bench_native, native_lines)
EXTRA_SUMMARIES["native"] = native_summary
