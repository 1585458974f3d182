"""`sspir demo-models DIR`: tiny random models in ComfyUI's folder layout, so the bundled workflows run anywhere."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo-models",
        help="write tiny random models (untrained: outputs are noise) in ComfyUI's models/ layout",
        description="Writes DIR/checkpoints, DIR/sspir, DIR/clip_vision and DIR/LLM with the file names the "
        "bundled workflows use. Point ComfyUI at DIR (its models/ folder, or extra_model_paths.yaml).",
    )
    p.add_argument("dir", help="a ComfyUI models/ folder, or any folder to list in extra_model_paths.yaml")
    p.add_argument("--overwrite", action="store_true", help="write files that already exist again")
    p.add_argument("--no-captioner", action="store_true", help="skip the tiny LLaVA folder")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument(
        "--native",
        action="store_true",
        help=(
            "also write the native route's set for ComfyUI's own loaders (example_workflows/sspir_native.json): "
            "the smallest "
            "SD1.5 checkpoint ComfyUI's model detection takes, an SSP-IR patch for it and a CLIP ViT-L vision file "
            "(full-size random text encoder, VAE and CLIP vision; about 1.3 GB)"
        ),
    )
    p.add_argument(
        "--native-full-size",
        action="store_true",
        help=(
            "write the native route's set at SD1.5's full size instead (random weights, about 4.7 GB; for "
            "`sspir bench --parts native` on a GPU: --native-checkpoint/--native-sspir/--native-clip-vision)"
        ),
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo.model_files import write_demo_models
    from ..errors import SSPIRError

    try:
        paths = write_demo_models(args.dir, seed=args.seed, overwrite=args.overwrite, captioner=not args.no_captioner)
        if args.native or args.native_full_size:
            from ..demo.native_models import write_native_demo_models

            native = write_native_demo_models(
                args.dir, seed=args.seed, overwrite=args.overwrite, full_size=args.native_full_size
            )
            paths.update({f"native_{k}": v for k, v in native.items()})
    except (SSPIRError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for kind, path in paths.items():
        print(f"{kind:12s} {path}")
    print("NOTE: random, untrained weights: restored images are noise-like; they only show that the path runs.")
    return 0
