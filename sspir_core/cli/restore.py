"""`sspir restore`: restore image files or folders to OUTDIR/<stem>.png."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def add_parser(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--negative", default="", help="negative prompt (default: empty, as in the paper)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cfg", type=float, default=7.5, help="classifier-free guidance on the text (1 = off)")
    p.add_argument("--scheduler", default="ddpm", choices=("ddpm", "ddim", "dpmpp", "unipc", "euler"))
    p.add_argument("--start", default="lq", choices=("lq", "noise"), help="start from the noised LQ latent or noise")
    p.add_argument("--conditioning-scale", type=float, default=1.0, help="ControlNet strength")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--upscale", type=float, default=4.0, help="output = input size x this")
    p.add_argument("--size", help="output size WxH (overrides --upscale)")
    p.add_argument("--tile", type=int, default=96, help="latent tile size (x8 px); 0 = no tiling")
    p.add_argument("--tile-overlap", type=int, default=32, help="latent tile overlap")
    p.add_argument("--vae-tile", type=int, default=1024, help="VAE tile in pixels; 0 = no tiling")
    p.add_argument("--color-fix", default="adain", choices=("adain", "wavelet", "none"))
    p.add_argument("--dtype", default="fp32", choices=tuple(DTYPES))
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps, or auto")
    p.add_argument("--offload", action="store_true", help="keep models on the CPU between stages (less GPU memory)")
    p.add_argument("--overwrite", action="store_true", help="redo outputs that exist")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the ControlNet + UNet (faster steps after a one-time compile; falls back "
                        "to eager with a message where it cannot compile)")
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
        ("--sd", args.sd, "Stable Diffusion 1.5 (or 2.1-base) weights", "ComfyUI models/checkpoints/ "
         "(e.g. v1-5-pruned-emaonly.safetensors) or a diffusers folder; from any SD1.5 mirror you trust"),
        ("--sspir", args.sspir, "SSP-IR weights", "models/sspir/: a checkpoint-N/ folder written by the official "
         "train.py, or a compact .safetensors; none are published, train them with this pack"),
        ("--clip-vision", args.clip_vision, "CLIP ViT-L/14 (224 px) vision weights", "ComfyUI models/clip_vision/ "
         "(e.g. clip-vit-large-patch14 model.safetensors) or an OpenCLIP ViT-L-14 file"),
    ]
    lines = [f"  {flag:14s} {what}: {value!r} not found; looked in {where}" if value else
             f"  {flag:14s} {what}: not given; put it in {where}" for flag, value, what, where in needed
             if not value or not Path(value).exists()]
    if not lines:
        return None
    return "missing weights (or use --preset tiny-random to try the pipeline with untrained toy models):\n" + "\n".join(lines)


def _device(name: str):
    import torch

    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def build_pipeline(args: argparse.Namespace, device, dtype):
    from ..presets import tiny_random_pipeline

    if args.preset == "tiny-random":
        return tiny_random_pipeline(args.sspir, device=device, dtype=dtype, seed=args.seed)
    from ..checkpoint import load_sspir_weights
    from ..loaders import load_clip_vision, load_sd_components
    from ..pipeline import RestorePipeline

    official = Path(args.sspir).is_dir()
    parts = ("vae", "text_encoder") if official else ("unet", "vae", "text_encoder")
    sd = load_sd_components(args.sd, base=args.base, parts=parts)
    sd_unet = None if official else sd.unet  # the official folder holds the full UNet; compact needs SD's
    models = load_sspir_weights(args.sspir, sd_unet=sd_unet, base=args.base or sd.base)
    clip = load_clip_vision(args.clip_vision)
    return RestorePipeline(models, sd.vae, sd.text_encoder, sd.tokenizer, clip, sd.scheduler_config,
                           device=device, dtype=dtype, offload=args.offload)


def run(args: argparse.Namespace) -> int:
    if args.preset is None:
        message = missing_weights_message(args)
        if message:
            print(f"error: {message}", file=sys.stderr)
            return 2
    import torch
    from tqdm import tqdm

    from ..errors import SSPIRError
    from ..image_io import load_image, resize_image, save_png
    from ..pipeline import RestoreOptions, restore_image

    files = collect_inputs(args.inputs)
    rank, world, device = 0, 1, _device(args.device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under `accelerate launch`: split the inputs
        from accelerate import PartialState

        state = PartialState()
        rank, world, device = state.process_index, state.num_processes, state.device
    files = files[rank::world]
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [f for f in files if args.overwrite or not (out_dir / f"{f.stem}.png").exists()]
    if len(todo) < len(files):
        print(f"skipping {len(files) - len(todo)} image(s) already in {out_dir} (use --overwrite to redo)")
    if not todo:
        return 0
    try:
        target = tuple(int(v) for v in args.size.lower().split("x")) if args.size else None
        options = RestoreOptions(
            steps=args.steps, cfg=args.cfg, scheduler=args.scheduler, negative_prompt=args.negative,
            conditioning_scale=args.conditioning_scale, start=args.start, seed=args.seed, color_fix=args.color_fix,
            tile=args.tile or None, tile_overlap=args.tile_overlap, vae_tile=args.vae_tile or None,
        )
        pipe = build_pipeline(args, device, getattr(torch, DTYPES[args.dtype]))
    except (SSPIRError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.compile:
        from ..compile_models import compile_denoiser

        compile_denoiser(pipe)
    if pipe.untrained:
        print("NOTE: tiny-random preset: the weights are random and untrained, so outputs are noise-like. "
              "It only shows that the whole path runs.")

    failed = 0
    bar = tqdm(todo, desc="restore", unit="img", disable=None)
    for file in bar:
        try:
            caption = args.caption
            if args.captions:
                txt = Path(args.captions) / f"{file.stem}.txt"
                caption = txt.read_text(encoding="utf-8").strip() if txt.is_file() else args.caption
            image = load_image(file)
            steps = tqdm(total=options.steps, desc=file.name, leave=False, disable=None)
            out = restore_image(pipe, image.rgb, caption, options, upscale=args.upscale, target_size=target,
                                callback=lambda i, n, z, bar=steps: bar.update(1), output_bits=8)
            steps.close()
            alpha = None if image.alpha is None else resize_image(image.alpha, tuple(out.shape[-2:])).clamp(0, 1)
            save_png(out, out_dir / f"{file.stem}.png", alpha=alpha)
        except (SSPIRError, ValueError, OSError) as e:
            failed += 1
            tqdm.write(f"failed: {file}: {e}", file=sys.stderr)
    print(f"restored {len(todo) - failed}/{len(todo)} image(s) into {out_dir}")
    return 1 if failed else 0
