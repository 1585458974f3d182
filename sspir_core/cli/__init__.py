"""`sspir` command line: one sub-command per module in this package.

Each module exposes ``add_parser(subparsers)`` and keeps heavy imports (torch, diffusers)
inside its run function, so ``sspir --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Sub-command modules, in the order `sspir --help` lists them.
COMMANDS: tuple[str, ...] = ("restore", "caption", "convert", "bench", "eval", "train", "make-pairs", "demo-models")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sspir", description="SSP-IR image restoration tools.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name.replace('-', '_')}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def console_main() -> int:
    """The ``sspir`` executable: owns its process, so it may retune process-wide state first (the CPU heap, and
    an import hook that keeps diffusers and peft from importing the unused bitsandbytes)."""
    from ..restore.cpu_heap import keep_freed_memory_from_env
    from .quiet_imports import install

    keep_freed_memory_from_env()
    install()
    return main()


if __name__ == "__main__":
    sys.exit(console_main())
