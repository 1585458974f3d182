"""`sspir make-pairs GT_DIR OUT_DIR`: write the official paired layout (gt/, sr_bicubic/, gt_llm_caption/) offline."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "make-pairs",
        help="degrade GT images into the official paired training layout",
        description="Real-ESRGAN second-order degradation (x4, then bicubic back to the GT size), "
        "deterministic per --seed and image. Bad images are reported and skipped.",
    )
    p.add_argument("gt_dir", help="folder of GT (high-quality) images")
    p.add_argument("out_dir", help="output folder; gets gt/, sr_bicubic/ and gt_llm_caption/")
    p.add_argument("--captions", help="folder of <stem>.txt captions to copy (default: empty captions)")
    p.add_argument(
        "--crop", type=int, default=512, help="random crop size in px (0 = whole image, cut to a multiple of --scale)"
    )
    p.add_argument("--scale", type=int, default=4, help="degradation scale (official x4)")
    p.add_argument(
        "--copies", type=int, default=1, help="degraded versions per GT image (different crops and degradations)"
    )
    p.add_argument(
        "--no-usm", action="store_true", help="write the GT as is instead of USM-sharpened (Real-ESRGAN's target)"
    )
    p.add_argument("--allow-gray", action="store_true", help="keep grayscale images (skipped by default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cpu, cuda, ... or auto")
    p.add_argument("--overwrite", action="store_true", help="redo pairs that exist")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from ..devices import choose_device
    from ..errors import SSPIRError
    from ..image_io import load_image, save_png
    from ..training.data import CAPTION_DIR, GT_DIR, LQ_DIR, derive_seed, list_images, read_caption, scan
    from ..training.degradations import DegradationSettings, degrade, usm_sharpen

    if args.crop and args.crop % args.scale:
        print(f"error: --crop {args.crop} must be a multiple of --scale {args.scale}", file=sys.stderr)
        return 2
    try:
        files = list_images(Path(args.gt_dir))
    except SSPIRError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = scan(files, max(args.crop, 4 * args.scale), args.allow_gray, size_flag="--crop")
    print(report.summary(), file=sys.stderr)
    out = Path(args.out_dir)
    for sub in (GT_DIR, LQ_DIR, CAPTION_DIR):
        (out / sub).mkdir(parents=True, exist_ok=True)
    device = choose_device(args.device, what="--device")
    settings = DegradationSettings(scale=args.scale)
    failed = written = 0
    for index, path in enumerate(tqdm(report.usable, desc="make-pairs", unit="img", disable=None)):
        for copy in range(args.copies):
            name = path.stem if args.copies == 1 else f"{path.stem}_{copy}"
            if not args.overwrite and (out / LQ_DIR / f"{name}.png").is_file():
                continue
            try:
                caption = ""  # read first: a bad caption must not leave a pair without its caption file
                if args.captions and (Path(args.captions) / f"{path.stem}.txt").is_file():
                    caption = read_caption(Path(args.captions) / f"{path.stem}.txt")
                g = torch.Generator().manual_seed(derive_seed(args.seed, index, copy))
                gt = load_image(path).rgb[0]
                h, w = gt.shape[-2:]
                if args.crop:
                    top = int(torch.randint(0, h - args.crop + 1, (), generator=g))
                    left = int(torch.randint(0, w - args.crop + 1, (), generator=g))
                    gt = gt[:, top : top + args.crop, left : left + args.crop]
                else:
                    gt = gt[:, : h - h % args.scale, : w - w % args.scale]
                gt = gt.to(device)
                lq = degrade(gt, derive_seed(args.seed, index, copy, 1), settings)
                target = gt if args.no_usm else usm_sharpen(gt)
                save_png(target[None].cpu(), out / GT_DIR / f"{name}.png")
                save_png(lq[None].cpu(), out / LQ_DIR / f"{name}.png")
                (out / CAPTION_DIR / f"{name}.txt").write_text(caption, encoding="utf-8")
                written += 1
            except (SSPIRError, ValueError, OSError) as e:
                failed += 1
                tqdm.write(f"failed: {path}: {e}", file=sys.stderr)
    print(f"wrote {written} pair(s) into {out} ({failed} failed, {len(report.skipped)} skipped)")
    return 1 if failed else 0
