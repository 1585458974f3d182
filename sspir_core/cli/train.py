"""`sspir train`: train SSP-IR (one stage, official recipe by default); `accelerate launch` for many GPUs/nodes."""

from __future__ import annotations

import argparse
import sys


def _flag_type(annotation: str):
    """argparse type for a TrainConfig field annotation (string annotations: ``from __future__ import annotations``)."""
    base = annotation.replace(" | None", "")
    return {"int": int, "float": float, "str": str}.get(base, str)


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..training.config import HELP, config_fields

    p = sub.add_parser(
        "train",
        help="train SSP-IR weights (accelerate: one GPU to many nodes)",
        description="Defaults are the official recipe. Multi-GPU / multi-node: "
        "`accelerate launch -m sspir_core.cli train ...` (see docs/training.md, Several GPUs or nodes).",
    )
    p.add_argument("--config", help="JSON, YAML or TOML file of options (flags given here override it)")
    for f in config_fields():
        flag = "--" + f.name.replace("_", "-")
        annotation = str(f.type)
        if annotation == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=HELP.get(f.name))
        elif annotation.startswith("list"):
            p.add_argument(flag, nargs="+", default=None, help=HELP.get(f.name))
        else:
            p.add_argument(flag, type=_flag_type(annotation), default=None, help=HELP.get(f.name))
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    from ..training.config import TrainConfig, config_fields, load_config_file

    values = load_config_file(args.config) if args.config else {}
    for f in config_fields():
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    return TrainConfig(**values).validate()


def run(args: argparse.Namespace) -> int:
    from ..errors import SSPIRError

    try:
        cfg = config_from_args(args)
        from ..training import Trainer

        trainer = Trainer(cfg)
        result = trainer.train()
    except (SSPIRError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if trainer.accelerator.is_main_process:
        print(f"trained to step {result.step}; last checkpoint: {result.last_checkpoint}")
    return 0
