"""`sspir convert`: between the official checkpoint-N/ layout and the compact single file."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert SSP-IR weights between the official folder and the compact file")
    p.add_argument(
        "direction",
        choices=("to-compact", "to-official"),
        help="to-compact: checkpoint-N/ -> .safetensors; to-official: .safetensors -> checkpoint folder",
    )
    p.add_argument("source", help="checkpoint-N/ folder (to-compact) or compact .safetensors (to-official)")
    p.add_argument("output", help="output .safetensors file (to-compact) or folder (to-official)")
    p.add_argument(
        "--sd",
        help="to-official only: SD weights for the full UNet (single file, diffusers folder, "
        "or an official checkpoint-N/ folder)",
    )
    p.add_argument("--base", choices=("sd15", "sd21"), help="expected base model (checked against the weights)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import SSPIRError
    from ..weights.checkpoint import compact_to_official, load_official_checkpoint, save_compact

    try:
        if args.direction == "to-compact":
            out = save_compact(load_official_checkpoint(args.source, base=args.base, merge_lora=False), args.output)
        else:
            if not args.sd:
                print(
                    "error: to-official needs --sd (the official layout stores the full UNet, SD weights included)",
                    file=sys.stderr,
                )
                return 2
            from ..weights.sd_unet import load_sd_unet

            out = compact_to_official(args.source, load_sd_unet(Path(args.sd), base=args.base), args.output)
    except SSPIRError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0
