"""`sspir eval`: score restored images against ground truth (PSNR/SSIM on Y, learned metrics when their
weights are on disk), write tables and pictures; with ``--restore`` restore the LQ images first."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

EXIT_SOME_FAILED = 1
"""Exit status when some pairs could not be read: the others were scored and every output was written.
(0: everything was scored; 2: nothing was, the run stopped at a bad flag or input.)"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="score restored images against ground truth (PSNR/SSIM/LPIPS/... tables and pictures)",
        description="Pairs --pred and --gt images by file name and scores them. Learned metrics run only when "
        "their weights are on disk (nothing is downloaded); the others are listed as skipped with the files "
        "they need. Exit status: 0 when every pair was scored, 1 when some pairs could not be read (named on "
        'stderr and under "failed" in --json; the others are scored and every output is written), 2 when the '
        "run stops before scoring (a bad flag, no pairs, mismatched sizes).",
    )
    p.add_argument("--gt", required=True, help="folder of ground-truth images")
    p.add_argument("--pred", required=True, help="folder of restored images (with --restore: written there)")
    p.add_argument("--lq", help="folder of LQ inputs (for the side-by-side pictures; required by --restore)")
    p.add_argument(
        "--recursive",
        action="store_true",
        help="also pair the images in subfolders, by path "
        "relative to each folder (GT city/a.png with restored city/a.png); without it they are "
        "counted in a warning and not scored",
    )
    p.add_argument(
        "--metrics",
        default="all",
        help="comma list or 'all' (default): psnr_y, ssim_y, lpips, dists, clip_sim, niqe, musiq, maniqa, clipiqa, fid",
    )
    p.add_argument(
        "--weights-dir",
        help="metric weights in torch-hub layout (pyiqa/, checkpoints/, clip/, "
        "open_clip/); default $SSPIR_EVAL_WEIGHTS or torch's hub cache (~/.cache/torch/hub)",
    )
    p.add_argument(
        "--niqe-params",
        help="NIQE model: pyiqa's niqe_modelparameters.mat or BasicSR's "
        "niqe_pris_params.npz (scripts/fetch_niqe_params.sh extracts it)",
    )
    p.add_argument(
        "--clip-model",
        help="OpenCLIP ViT-L/14 weights for clip_sim (.safetensors or .pt/.bin); "
        "default <weights-dir>/open_clip/ViT-L-14.safetensors",
    )
    p.add_argument("--clip-arch", default="ViT-L-14", help="open_clip model name for --clip-model")
    p.add_argument("--crop-border", type=int, default=0, help="pixels dropped on each side for PSNR/SSIM")
    p.add_argument(
        "--protocol",
        default="none",
        choices=("none", "realsr"),
        help="realsr: score 512 px GT centre crops (LQ 128 px centre crops are restored x4)",
    )
    p.add_argument("--json", help="write {images, mean, skipped, missing, ...} to this file")
    p.add_argument("--csv", help="write the per-image table as CSV")
    p.add_argument("--markdown", help="write the Markdown table here (it is always printed)")
    p.add_argument("--pictures", help="folder for best/worst side-by-side pictures and distribution.png")
    p.add_argument("--rank-by", default="psnr_y", help="metric that picks the best and worst image (default psnr_y)")
    p.add_argument("--device", default="auto", help="cpu, cuda, mps or auto")
    p.add_argument(
        "--restore",
        nargs=argparse.REMAINDER,
        metavar="RESTORE_FLAGS",
        help="restore --lq into --pred first; every flag after --restore goes to `sspir restore` "
        "(e.g. --restore --preset tiny-random --steps 4); the table gets a time_s column",
    )
    p.set_defaults(func=run)


def _restore(args: argparse.Namespace, protocol, scratch: Path) -> tuple[int, dict[str, float]]:
    """Run `sspir restore` on the LQ folder (its centre crops under a protocol) into --pred, timing each image."""
    from ..evaluation.pairing import list_images
    from ..image_io import load_image, save_png
    from . import restore

    if not args.lq:
        raise ValueError("--restore needs --lq (the folder of degraded inputs)")
    if any(a in ("-o", "--output") or a.startswith("--output=") for a in args.restore):
        raise ValueError("--restore: do not pass -o/--output, the restored images go to --pred")
    if args.recursive:
        raise ValueError(
            "--recursive cannot be combined with --restore: `sspir restore` reads one folder level "
            "and writes flat names; restore each subfolder into the same subfolder of --pred, "
            "then run eval --recursive without --restore"
        )
    lq_dir = Path(args.lq)
    if protocol.name != "none":
        crops = scratch / "lq"
        for stem, path in list_images(lq_dir, "--lq").items():
            save_png(protocol.crop_lq(load_image(path).rgb, f"LQ {stem}"), crops / f"{stem}.png")
        lq_dir = crops
    parser = argparse.ArgumentParser(prog="sspir eval --restore")
    restore.add_parser(parser.add_subparsers())
    try:
        ns = parser.parse_args(["restore", str(lq_dir), "-o", args.pred, *args.restore])
    except SystemExit as exc:  # argparse has printed what was wrong
        raise ValueError(
            "--restore: `sspir restore` does not accept those flags; every flag after --restore "
            "goes to it, so put eval's own flags (--json, --metrics, ...) before --restore"
        ) from exc
    ns.timings = {}
    return int(restore.run(ns) or 0), ns.timings


def run(args: argparse.Namespace) -> int:
    from ..errors import SSPIRError
    from ..evaluation import (
        WeightsConfig,
        default_weights_dir,
        evaluate,
        get_protocol,
        pair_images,
        parse_metric_names,
    )
    from ..evaluation.metrics import METRICS

    try:
        metrics = parse_metric_names(args.metrics)
        if args.rank_by not in METRICS or METRICS[args.rank_by].kind == "set":
            raise ValueError(f"--rank-by must be a per-image metric, got {args.rank_by!r}")
        protocol = get_protocol(args.protocol)
        if args.crop_border < 0:
            raise ValueError(f"--crop-border must be >= 0, got {args.crop_border}")
        for flag, value in (("--niqe-params", args.niqe_params), ("--clip-model", args.clip_model)):
            if value and not Path(value).is_file():
                raise ValueError(f"{flag}: file not found: {value}")
        weights = WeightsConfig(
            Path(args.weights_dir) if args.weights_dir else default_weights_dir(),
            Path(args.niqe_params) if args.niqe_params else None,
            Path(args.clip_model) if args.clip_model else None,
            args.clip_arch,
        )
        timings = None
        with tempfile.TemporaryDirectory(prefix="sspir-eval-") as scratch:
            if args.restore is not None:
                code, timings = _restore(args, protocol, Path(scratch))
                if code == 2:
                    return 2
            pairing = pair_images(args.pred, args.gt, args.lq, recursive=args.recursive)
        for line in pairing.describe_missing() + pairing.describe_subfolders():
            print(f"warning: {line}", file=sys.stderr)
        from ..devices import choose_device

        device = choose_device(args.device, what="--device")
        result = evaluate(
            pairing, metrics, weights, device=device, crop_border=args.crop_border, protocol=protocol, timings=timings
        )
    except (SSPIRError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for image, metrics in result.not_scored.items():
        for metric, why in metrics.items():
            print(f"warning: {image}: {metric} not scored: {why['reason']} ({why['detail']})", file=sys.stderr)
    for image, why in result.failed.items():
        print(f"error: {image}: not scored: {why['error']}", file=sys.stderr)
    code = _write_outputs(args, result, pairing, protocol)
    if code == 0 and result.failed:
        print(
            f"error: {len(result.failed)} of {len(result.failed) + len(result.images)} pair(s) could not be read "
            'and were not scored (listed above and under "failed" in --json); the others were',
            file=sys.stderr,
        )
        return EXIT_SOME_FAILED
    return code


def _write_outputs(args, result, pairing, protocol) -> int:
    from ..evaluation import report

    table = report.markdown(result)
    print(table, end="")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(table, encoding="utf-8")
    if args.csv:
        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        Path(args.csv).write_text(report.csv_text(result), encoding="utf-8")
    if args.json:
        report.write_json(result, args.json)
    if args.pictures:
        from ..evaluation.pictures import write_pictures

        try:
            paths = write_pictures(result, pairing.pairs, protocol, args.rank_by, Path(args.pictures))
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print("pictures: " + ", ".join(str(p) for p in paths))
    return 0
