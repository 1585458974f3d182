"""`sspir bench`: time the SSP-IR sampler against stock diffusers, the per-image priors, and tiled peak memory."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..devices import DTYPE_NAMES

PARTS = ("step", "flops", "priors", "image", "memory", "train")
DEFAULT_PARTS = ["step", "flops", "priors", "memory"]


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated pixel sizes, got {text!r}") from e
    if not sizes or any(s < 64 or s % 32 for s in sizes):
        raise argparse.ArgumentTypeError(f"sizes must be multiples of 32 and >= 64, got {text!r}")
    return sizes


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark: ms/step vs stock diffusers, priors share, peak memory vs size",
        description="Random-weight models; nothing is downloaded. Timings are noisy when other "
        "processes share the cores: check the load printed in the header.",
    )
    p.add_argument(
        "--config",
        choices=("tiny", "tiny-medium", "sd15"),
        help="model size (default: sd15 with CUDA, else tiny-medium)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
    p.add_argument("--dtype", default=None, choices=DTYPE_NAMES, help="default fp16 on CUDA, else fp32")
    p.add_argument(
        "--parts",
        default=None,
        help=f"comma-separated subset of {','.join(PARTS)},one-step,native,cuda-dry-run (default: "
        f"{','.join(DEFAULT_PARTS)}; sd15 adds image). native: the native route against PGA Sampler "
        "in real ComfyUI servers (needs a checkout with `bash scripts/setup.sh --comfyui`). "
        "cuda-dry-run: every route at full SD1.5 size on fake CUDA tensors (no GPU needed), its "
        "device/dtype checks and the VRAM they imply (--config does not apply)",
    )
    p.add_argument("--size", type=int, help="output px for the step/priors/image parts (default 256 CPU, 512 sd15)")
    p.add_argument("--steps", type=int, default=50, help="steps of the run the priors are compared with")
    p.add_argument("--estimate-run", action="store_true", help="estimate that run as steps x ms/step (faster)")
    p.add_argument("--step-steps", type=int, default=2, help="denoising steps per timed repeat")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (median) after one warm-up")
    p.add_argument("--sizes", type=_sizes, default=[512, 1024, 2048], help="output sizes for peak memory")
    p.add_argument("--memory-steps", type=int, default=None, help="steps per memory run (default 1 CPU, 2 CUDA)")
    p.add_argument("--tile", type=int, default=64, help="latent tile for the memory runs")
    p.add_argument("--tile-overlap", type=int, default=16)
    p.add_argument("--vae-tile", type=int, default=512, help="VAE tile in px")
    p.add_argument("--cfg", type=float, default=7.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--output-bits",
        type=int,
        default=8,
        choices=(0, 8, 16),
        help="output of the memory/image runs: 8/16-bit integers from the streamed tail (what "
        "`sspir restore` writes) or 0 for the float tensor path",
    )
    p.add_argument(
        "--memory-method",
        default="tensors",
        choices=("tensors", "rss"),
        help="CPU memory runs: peak tensor bytes from torch's allocator accounting (repeatable, what "
        "CUDA's max_memory_allocated counts) or peak process RSS (what the OS sees; moves with "
        "the C heap's fragmentation)",
    )
    p.add_argument("--threads", type=int, help="torch CPU threads (1 gives the steadiest ratios on shared cores)")
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the ControlNet + UNet (falls back to eager with a message if it cannot)",
    )
    p.add_argument(
        "--ablate",
        action="store_true",
        help="step part: also time the sampler with each fast path switched, one at a time (their shares)",
    )
    native = p.add_argument_group("native part (--parts native: the same restore through both ComfyUI routes)")
    native.add_argument(
        "--native-size",
        type=int,
        help="output px, a multiple of 32; the LQ is a quarter of it (default 64 on the CPU, 2048 on CUDA)",
    )
    native.add_argument(
        "--native-steps",
        type=int,
        help="denoising steps (default 4 on the CPU, 50 on CUDA); "
        "--repeats timed images per route follow one warm-up, --cfg and --seed apply",
    )
    native.add_argument(
        "--native-order",
        choices=("interleaved", "sequential"),
        help="interleaved: both servers "
        "up, prompts alternating (background load hits both alike; default on the CPU); sequential: "
        "one server after the other (the idle one's models never hold VRAM; default on CUDA)",
    )
    native.add_argument(
        "--native-checkpoint",
        help="SD1.5 single-file checkpoint for both routes (with the next two; "
        "default: the random native demo files, cached)",
    )
    native.add_argument("--native-sspir", help="SSP-IR weights (.safetensors) for both routes")
    native.add_argument("--native-clip-vision", help="CLIP ViT-L vision file for both routes")
    p.add_argument("--json", help="also write all numbers to this JSON file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..bench.report import format_report
    from ..bench.run import run_bench

    cuda = torch.cuda.is_available()
    device = ("cuda" if cuda else "cpu") if args.device == "auto" else args.device
    config = args.config or ("sd15" if device.startswith("cuda") else "tiny-medium")
    if device.startswith("cuda") and not cuda:
        print(
            f"error: --device {device} but CUDA is not available here (torch {torch.__version__}); "
            "use --device cpu --config tiny-medium on the CPU",
            file=sys.stderr,
        )
        return 2
    if config == "sd15" and not device.startswith("cuda") and args.device != "cpu":
        print(
            "error: --config sd15 needs a CUDA GPU (--device cuda); it is far too slow on the CPU. "
            "Use --config tiny-medium here, or --device cpu to force it.",
            file=sys.stderr,
        )
        return 2
    from ..bench import dry_run, native, one_step  # noqa: F401 (register the one-step, native and dry-run parts)
    from ..bench.settings import EXTRA_PARTS

    known = (*PARTS, *EXTRA_PARTS)
    parts = args.parts.split(",") if args.parts else DEFAULT_PARTS + (["image"] if config == "sd15" else [])
    unknown = sorted(set(parts) - set(known))
    if unknown:
        print(f"error: unknown part(s) {', '.join(unknown)}; choose from {', '.join(known)}", file=sys.stderr)
        return 2
    if args.threads is not None and args.threads < 1:
        print("error: --threads must be >= 1", file=sys.stderr)
        return 2
    if min(args.steps, args.step_steps, args.repeats) < 1 or not 0 <= args.tile_overlap < args.tile:
        print(
            "error: --steps, --step-steps and --repeats must be >= 1 and 0 <= --tile-overlap < --tile", file=sys.stderr
        )
        return 2
    settings = build_settings(args, device, config)
    if "native" in parts:
        from ..errors import InputError

        try:
            native.native_plan(settings)  # its sizes and files, before anything runs
        except InputError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if "train" in parts:  # training-step figure: sspir_core/bench/training.py
        from ..bench.training import bench_train_step, format_train_report

        cuda_run = device.startswith("cuda")
        print(
            format_train_report(
                bench_train_step(
                    config,
                    device,
                    settings.dtype,
                    settings.size,
                    repeats=args.repeats,
                    gradient_checkpointing=cuda_run,
                    find_max_batch=cuda_run,
                )
            )
        )
        parts = [p for p in parts if p != "train"]
        if not parts:
            return 0
    from ..errors import SSPIRError

    try:
        result = run_bench(settings, parts, log=lambda m: print(m, file=sys.stderr, flush=True))
    except SSPIRError as e:  # the native part without ComfyUI, a failed bench prompt
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def build_settings(args: argparse.Namespace, device: str, config: str):
    """The :class:`~sspir_core.bench.settings.BenchSettings` of parsed flags (defaults that depend on the device)."""
    from ..bench.settings import BenchSettings

    return BenchSettings(
        config=config,
        device=device,
        dtype=args.dtype or ("fp16" if device.startswith("cuda") else "fp32"),
        size=args.size or (512 if config == "sd15" else 256),
        steps=args.steps,
        step_steps=args.step_steps,
        repeats=args.repeats,
        estimate_run=args.estimate_run,
        sizes=args.sizes,
        memory_steps=args.memory_steps or (2 if device.startswith("cuda") else 1),
        tile=args.tile,
        tile_overlap=args.tile_overlap,
        vae_tile=args.vae_tile,
        image_steps=args.steps,
        cfg=args.cfg,
        seed=args.seed,
        threads=args.threads,
        output_bits=args.output_bits or None,
        memory_method=args.memory_method,
        compile=args.compile,
        ablate=args.ablate,
        native_size=args.native_size,
        native_steps=args.native_steps,
        native_order=args.native_order,
        native_checkpoint=args.native_checkpoint,
        native_sspir=args.native_sspir,
        native_clip_vision=args.native_clip_vision,
    )
