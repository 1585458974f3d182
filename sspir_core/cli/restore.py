"""`sspir restore`: restore image files or folders to OUTDIR/<stem>.png.

Everything that can be checked is checked before a model is loaded: every option (messages name the flag),
the output folder (created, writable, and never where an output would replace an input), two inputs that
would write one output, the captions folder, and outputs so large they deserve a warning. Then one failing
image is reported with its name and the rest go on; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
# RestoreOptions field -> the flag that sets it, so option errors name what the user typed.
FLAGS = {
    "steps": "--steps",
    "cfg": "--cfg",
    "scheduler": "--scheduler",
    "negative_prompt": "--negative",
    "conditioning_scale": "--conditioning-scale",
    "start": "--start",
    "seed": "--seed",
    "color_fix": "--color-fix",
    "tile": "--tile",
    "tile_overlap": "--tile-overlap",
    "vae_tile": "--vae-tile",
}
LARGE_OUTPUT = 4096 * 4096
"""Outputs with more pixels than this are announced (with their size) before any model is loaded."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..devices import DTYPE_NAMES
    from ..restore.choices import COLOR_FIX_METHODS, SCHEDULERS
    from ..restore.options import START_CHOICES, RestoreOptions

    own = RestoreOptions()  # the paper's settings: the defaults the nodes' widgets show too
    p = sub.add_parser("restore", help="restore degraded images with SSP-IR")
    p.add_argument("inputs", nargs="+", help="image files and/or folders")
    p.add_argument("-o", "--output", required=True, help="output folder (writes <stem>.png)")
    p.add_argument("--preset", choices=("tiny-random",), help="tiny random models: runs anywhere, output is noise")
    p.add_argument("--sd", help="Stable Diffusion 1.5/2.1-base: single-file checkpoint or diffusers folder")
    p.add_argument("--sspir", help="SSP-IR weights: official checkpoint-N/ folder or compact .safetensors")
    p.add_argument("--clip-vision", help="CLIP ViT-L/14 vision weights (transformers or OpenCLIP format)")
    p.add_argument("--base", choices=("sd15", "sd21"), help="base model (default: detected from the weights)")
    p.add_argument("--caption", default="", help="caption for every image (the explicit semantic prior)")
    p.add_argument("--captions", help="folder of <stem>.txt captions (e.g. from `sspir caption`)")
    p.add_argument("--negative", default=own.negative_prompt, help="negative prompt (default: empty, as in the paper)")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"sampling steps (default: the checkpoint's: {own.steps}, or 1 for a one-step checkpoint)",
    )
    p.add_argument(
        "--cfg",
        type=float,
        default=None,
        help=f"classifier-free guidance on the text (1 = off; default: {own.cfg:g}, or 1 for a one-step checkpoint)",
    )
    p.add_argument("--scheduler", default=own.scheduler, choices=tuple(SCHEDULERS))
    p.add_argument("--start", default=own.start, choices=START_CHOICES, help="start from the noised LQ latent or noise")
    p.add_argument("--conditioning-scale", type=float, default=own.conditioning_scale, help="ControlNet strength")
    p.add_argument("--seed", type=int, default=own.seed)
    p.add_argument("--upscale", type=float, default=4.0, help="output = input size x this")
    p.add_argument("--size", help="output size WxH (overrides --upscale)")
    p.add_argument("--tile", type=int, default=own.tile or 0, help="latent tile size (x8 px); 0 = no tiling")
    p.add_argument("--tile-overlap", type=int, default=own.tile_overlap, help="latent tile overlap")
    p.add_argument("--vae-tile", type=int, default=own.vae_tile or 0, help="VAE tile in pixels; 0 = no tiling")
    p.add_argument("--color-fix", default=own.color_fix, choices=COLOR_FIX_METHODS)
    p.add_argument("--dtype", default="fp32", choices=DTYPE_NAMES)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps, or auto (CUDA, then MPS, then CPU)")
    p.add_argument("--offload", action="store_true", help="keep models on the CPU between stages (less GPU memory)")
    p.add_argument("--overwrite", action="store_true", help="redo outputs that exist (never replaces an input)")
    p.add_argument("--debug", action="store_true", help="print the traceback of every failure")
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the ControlNet + UNet (faster steps after a one-time compile; falls back "
        "to eager with a message where it cannot compile)",
    )
    p.set_defaults(func=run)


def collect_inputs(items: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files.append(path)  # a missing or bad file is reported when it is read
    return files


def missing_weights_message(args: argparse.Namespace) -> str | None:
    needed = [
        (
            "--sd",
            args.sd,
            "Stable Diffusion 1.5 (or 2.1-base) weights",
            "ComfyUI models/checkpoints/ "
            "(e.g. v1-5-pruned-emaonly.safetensors) or a diffusers folder; from any SD1.5 mirror you trust",
        ),
        (
            "--sspir",
            args.sspir,
            "SSP-IR weights",
            "models/sspir/: a checkpoint-N/ folder written by the official "
            "train.py, or a compact .safetensors; none are published, train them with this pack",
        ),
        (
            "--clip-vision",
            args.clip_vision,
            "CLIP ViT-L/14 (224 px) vision weights",
            "ComfyUI models/clip_vision/ (e.g. clip-vit-large-patch14 model.safetensors) or an OpenCLIP ViT-L-14 file",
        ),
    ]
    lines = [
        f"  {flag:14s} {what}: {value!r} not found; looked in {where}"
        if value
        else f"  {flag:14s} {what}: not given; put it in {where}"
        for flag, value, what, where in needed
        if not value or not Path(value).exists()
    ]
    if not lines:
        return None
    return "missing weights (or use --preset tiny-random to try the pipeline with untrained toy models):\n" + "\n".join(
        lines
    )


def build_pipeline(args: argparse.Namespace, device, dtype):
    from ..demo.presets import tiny_random_pipeline

    if args.preset == "tiny-random":
        # The toy models' own seed stays fixed (the trainer builds its frozen parts with the same one):
        # --seed is the sampling seed, it must not swap the frozen VAE/text/CLIP parts under trained weights.
        return tiny_random_pipeline(args.sspir, device=device, dtype=dtype)
    from ..restore.components import load_pipeline

    return load_pipeline(
        args.sd, args.sspir, args.clip_vision, base=args.base, device=device, dtype=dtype, offload=args.offload
    )


# ------------------------------------------------------------------------------------------ checks first


@dataclass
class Job:
    """One input and where it goes; ``caption_file`` is None when the caption comes from ``--caption``."""

    source: Path
    output: Path
    caption_file: Path | None = None
    bits: int = 8


def _options(args: argparse.Namespace):
    from ..errors import InputError, OptionError

    for flag, value in (("--tile", args.tile), ("--vae-tile", args.vae_tile)):
        if value < 0:
            raise InputError(f"{flag} must be >= 0 (0 = no tiling), got {value}")
    from ..restore.options import options_for_mode
    from ..weights.one_step import read_mode

    mode = read_mode(args.sspir) if args.sspir else "multi-step"  # metadata only: no weights loaded yet
    try:
        return options_for_mode(
            mode,
            args.steps,
            args.cfg,
            warn=lambda w: print(f"{w} (--steps)", file=sys.stderr),
            source=f"--sspir {args.sspir}",
            scheduler=args.scheduler,
            negative_prompt=args.negative,
            conditioning_scale=args.conditioning_scale,
            start=args.start,
            seed=args.seed,
            color_fix=args.color_fix,
            tile=args.tile,
            tile_overlap=args.tile_overlap,
            vae_tile=args.vae_tile,
        )
    except OptionError as e:
        raise InputError(e.named(FLAGS)) from None


def _target_size(args: argparse.Namespace) -> tuple[int, int] | None:
    from ..errors import InputError

    if not args.size:
        if not (math.isfinite(args.upscale) and args.upscale > 0):
            raise InputError(f"--upscale must be a positive number, got {args.upscale}")
        return None
    parts = args.size.lower().split("x")
    try:
        w, h = (int(v) for v in parts)
    except ValueError:
        w = h = 0
    if len(parts) != 2 or w < 1 or h < 1:
        raise InputError(f"--size must be WIDTHxHEIGHT in pixels, e.g. 2048x1536; got {args.size!r}")
    return w, h


def _output_folder(path: Path) -> Path:
    """Create ``-o`` if needed and prove it writable, before anything else is done."""
    from ..errors import InputError

    if path.exists() and not path.is_dir():
        raise InputError(f"-o {path}: this is a file; give a folder for the restored images")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise InputError(f"-o {path}: cannot write there ({e.strerror or e})") from None
    return path


def _identity(path: Path) -> object:
    """What makes two paths one file: (device, inode) when it exists (links too), else the resolved path."""
    try:
        st = path.stat()
        return (st.st_dev, st.st_ino)
    except OSError:
        return path.resolve()


def plan_jobs(args: argparse.Namespace, files: list[Path], out_dir: Path) -> list[Job]:
    """One job per input, after refusing outputs that would replace an input or that two inputs share."""
    from ..errors import InputError

    jobs = [Job(f, out_dir / f"{f.stem}.png") for f in files]
    by_output: dict[Path, list[Path]] = {}
    for job in jobs:
        by_output.setdefault(job.output, []).append(job.source)
    shared = {out: srcs for out, srcs in by_output.items() if len(srcs) > 1}
    if shared:
        lines = [f"  {out} <- {', '.join(str(s) for s in srcs)}" for out, srcs in shared.items()]
        raise InputError(
            "inputs with the same name would write the same output; rename them or restore them "
            "into separate folders:\n" + "\n".join(lines)
        )
    inputs = {_identity(f) for f in files}
    clobbered = [job.output for job in jobs if _identity(job.output) in inputs]
    if clobbered:
        raise InputError(
            f"-o {out_dir}: the restored images would replace the input file(s) "
            f"{', '.join(str(p) for p in clobbered)}; choose another output folder"
        )
    if args.captions:
        folder = Path(args.captions)
        for job in jobs:
            txt = folder / f"{job.source.stem}.txt"
            job.caption_file = txt if txt.is_file() else None
    return jobs


def _announce(jobs: list[Job], upscale: float, target: tuple[int, int] | None) -> None:
    """Read each input's header: note animations and huge outputs; keep 16-bit inputs 16-bit."""
    from ..errors import InputError
    from ..image_io import output_size, probe_image

    for job in jobs:
        try:
            info = probe_image(job.source)
        except InputError:
            continue  # reported when the image is read
        job.bits = info.bits
        if info.frames > 1:
            print(f"note: {job.source} has {info.frames} frames; only the first is restored")
        w, h = output_size(info.width, info.height, upscale, target)
        if w * h > LARGE_OUTPUT:
            how = "--size" if target else f"x{upscale:g}"
            print(
                f"note: {job.source} is {info.width}x{info.height} px: the output will be {w}x{h} px "
                f"({w * h / 1e6:.0f} MP, {how}), which takes long and needs much memory; "
                "--upscale or --size make it smaller"
            )


def _failure(path: Path, exc: BaseException, debug: bool) -> str:
    """One line naming the file once; the traceback only with --debug."""
    from ..errors import SSPIRError

    message = str(exc) if isinstance(exc, SSPIRError) else f"{type(exc).__name__}: {exc}"
    line = message if str(path) in message else f"{path}: {message}"
    if debug:
        line += "\n" + "".join(traceback.format_exception(exc))
    return f"failed: {line}"


def _read_caption(job: Job, default: str) -> str:
    from ..errors import InputError

    if job.caption_file is None:
        return default
    try:
        return job.caption_file.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError as e:
        raise InputError(f"caption file {job.caption_file} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def _save(out, path: Path, alpha, bits: int) -> None:
    """Write through a temporary file, so an interrupted run never leaves a half image that looks done."""
    from ..files import atomic_path
    from ..image_io import save_png

    with atomic_path(path) as tmp:
        save_png(out, tmp, bits=bits, alpha=alpha)


# ------------------------------------------------------------------------------------------ the run


def run(args: argparse.Namespace) -> int:
    from ..devices import choose_device
    from ..errors import SSPIRError

    try:
        if args.preset is None and (message := missing_weights_message(args)):
            raise SSPIRError(message)
        options = _options(args)
        target = _target_size(args)
        device = choose_device(args.device, what="--device")
        if args.captions and not Path(args.captions).is_dir():
            raise SSPIRError(f"--captions {args.captions}: no such folder")
        files = collect_inputs(args.inputs)
        if not files:
            raise SSPIRError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {' '.join(args.inputs)}")
        out_dir = _output_folder(Path(args.output))  # the last check: it creates the folder
        jobs = plan_jobs(args, files, out_dir)
    except SSPIRError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    rank, world = 0, 1
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under `accelerate launch`: split the inputs
        from accelerate import PartialState

        state = PartialState()
        rank, world, device = state.process_index, state.num_processes, state.device
    jobs = jobs[rank::world]
    todo = [j for j in jobs if args.overwrite or not j.output.exists()]
    if len(todo) < len(jobs):
        print(f"skipping {len(jobs) - len(todo)} image(s) already in {out_dir} (use --overwrite to redo)")
    if not todo:
        return 0
    _announce(todo, args.upscale, target)
    return _restore_all(args, todo, options, target, device, out_dir)


def _restore_all(args, todo: list[Job], options, target, device, out_dir: Path) -> int:
    from tqdm import tqdm

    from ..devices import torch_dtype
    from ..errors import SSPIRError
    from ..image_io import load_image, resize_image
    from ..restore.pipeline import restore_image

    try:
        pipe = build_pipeline(args, device, torch_dtype(args.dtype, "--dtype"))
    except Exception as e:  # a model that cannot load stops the run: what went wrong, the traceback on --debug
        if args.debug:
            traceback.print_exception(e)
        what = str(e) if isinstance(e, SSPIRError) else f"{type(e).__name__}: {e} (--debug shows the traceback)"
        print(f"error: cannot load the models: {what}", file=sys.stderr)
        return 2
    if args.compile:
        from ..restore.compile_models import compile_denoiser

        compile_denoiser(pipe)
    if pipe.untrained:
        trained = (
            "the SSP-IR parts come from --sspir, the SD and CLIP parts are random"
            if args.sspir
            else "the weights are random and untrained"
        )
        print(
            f"NOTE: tiny-random preset: {trained}, so outputs are noise-like. It only shows that the whole path runs."
        )

    failed: list[Path] = []
    timings = getattr(args, "timings", None)  # `sspir eval --restore` passes a dict: seconds per output stem
    bar = tqdm(todo, desc="restore", unit="img", disable=None)
    for job in bar:
        try:
            start = time.perf_counter()
            caption = _read_caption(job, args.caption)
            image = load_image(job.source)
            with tqdm(total=options.steps, desc=job.source.name, leave=False, disable=None) as steps:
                out = restore_image(
                    pipe,
                    image.rgb,
                    caption,
                    options,
                    upscale=args.upscale,
                    target_size=target,
                    callback=lambda i, n, z, bar=steps: bar.update(1),
                    output_bits=job.bits,
                )  # streamed integer tail: flat memory
            alpha = None if image.alpha is None else resize_image(image.alpha, tuple(out.shape[-2:])).clamp(0, 1)
            _save(out, job.output, alpha, job.bits)
            if timings is not None:
                timings[job.output.stem] = time.perf_counter() - start
        except Exception as e:  # any failure of one image: name it, go on with the rest
            failed.append(job.source)
            tqdm.write(_failure(job.source, e, args.debug), file=sys.stderr)
    print(f"restored {len(todo) - len(failed)}/{len(todo)} image(s) into {out_dir}")
    if failed:
        print(f"failed ({len(failed)}): {', '.join(str(p) for p in failed)}", file=sys.stderr)
    if args.captions:
        uncaptioned = [j.source.name for j in todo if j.caption_file is None]
        if uncaptioned:
            print(
                f"no caption file in {args.captions} for {len(uncaptioned)} image(s), used --caption "
                f"{args.caption!r}: {', '.join(uncaptioned)}"
            )
    return 1 if failed else 0
