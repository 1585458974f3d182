"""`sspir caption`: write one caption .txt per image (the training layout's ``gt_llm_caption/``).

Resumable: images whose .txt exists are skipped unless --overwrite. One failing image is reported and
the rest go on; the exit code is 1 when any image failed, 2 when the captioner cannot start.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..files import write_text_atomic

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"})


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "caption",
        help="caption images to OUTDIR/<stem>.txt (LLaVA, Qwen-VL, Florence-2, BLIP, OpenAI-compatible server)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders of images")
    p.add_argument("-o", "--output-dir", required=True, type=Path, metavar="OUTDIR", help="where <stem>.txt go")
    p.add_argument(
        "--captioner", default="llava", help="llava (default, the paper's), qwen2-vl, florence2, blip, openai or text"
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", metavar="DIR", help="local model folder (e.g. a download of llava-hf/llava-1.5-7b-hf)")
    src.add_argument("--url", help="OpenAI-compatible server, e.g. http://127.0.0.1:11434/v1 (Ollama)")
    src.add_argument("--text", help="for --captioner text: the caption to write for every image")
    p.add_argument("--prompt", help="instruction (or Florence-2 task token); default: the backend's own")
    p.add_argument("--max-new-tokens", type=int, help="longest caption, in tokens")
    p.add_argument("--seed", type=int, default=0, help="sampling seed: same seed, same caption (default 0)")
    p.add_argument("--model-name", help="for openai: the model name the server knows (default: its only model)")
    p.add_argument("--api-key-env", metavar="VAR", help="for openai: environment variable holding the API key")
    p.add_argument("--timeout", type=float, default=120.0, help="for openai: seconds per request (default 120)")
    p.add_argument(
        "--deadline",
        type=float,
        default=300.0,
        help="for openai: most seconds one caption may take, retries included (default 300)",
    )
    p.add_argument("--retries", type=int, default=2, help="for openai: retries after a failed request (default 2)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default="auto", help="auto (fp16 on GPU, fp32 on CPU), fp16, bf16, fp32")
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow Python code shipped in the model folder to run (original Florence-2 folders)",
    )
    p.add_argument("--recursive", action="store_true", help="look for images in sub-folders too")
    p.add_argument("--overwrite", action="store_true", help="caption again even when the .txt exists")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument(
        "--cache-dir", type=Path, help="caption cache folder (default: $SSPIR_CACHE_DIR or ~/.cache/sspir)"
    )
    cache.add_argument("--no-cache", action="store_true", help="do not read or write the caption cache")
    p.set_defaults(func=run)
    return p


def find_images(inputs: list[str], recursive: bool) -> tuple[list[Path], list[str]]:
    """Image paths in command-line order (folders sorted), and messages for inputs that do not exist."""
    found: list[Path] = []
    problems: list[str] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            found.extend(sorted(p for p in path.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            found.append(path)
        else:
            problems.append(f"{path}: no such file or folder")
    return found, problems


def _captioner_options(args: argparse.Namespace) -> dict:
    opts: dict = {"seed": args.seed}
    if args.prompt is not None:
        opts["prompt"] = args.prompt
    if args.no_cache:
        opts["cache_dir"] = None
    elif args.cache_dir is not None:
        opts["cache_dir"] = args.cache_dir
    name = args.captioner.lower()
    if name in ("openai", "ollama"):
        opts.update(
            url=args.url,
            model_name=args.model_name,
            api_key_env=args.api_key_env,
            timeout=args.timeout,
            deadline=args.deadline,
            retries=args.retries,
        )
        if args.max_new_tokens is not None:
            opts["max_new_tokens"] = args.max_new_tokens
    elif name in ("text", "typed"):
        opts = {"text": args.text}
    else:
        opts.update(
            model_dir=args.model,
            device=args.device,
            dtype=args.dtype,
            max_new_tokens=args.max_new_tokens,
            trust_remote_code=args.trust_remote_code,
        )
    return opts


def run(args: argparse.Namespace) -> int:
    from PIL import Image, ImageOps
    from tqdm import tqdm

    from ..captioners import get_captioner
    from ..errors import SSPIRError

    if args.captioner.lower() in ("text", "typed") and not (args.text or "").strip():
        print(
            "error: --captioner text writes the caption given with --text; --text is missing or empty", file=sys.stderr
        )
        return 2
    images, problems = find_images(args.inputs, args.recursive)
    for msg in problems:
        print(f"error: {msg}", file=sys.stderr)
    failed = len(problems)

    out_dir: Path = args.output_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    todo: list[tuple[Path, Path]] = []
    seen: dict[str, Path] = {}
    skipped = 0
    for img_path in images:
        if img_path.stem in seen:
            print(
                f"error: {img_path} and {seen[img_path.stem]} would both write {img_path.stem}.txt; "
                "caption them into different output folders",
                file=sys.stderr,
            )
            failed += 1
            continue
        seen[img_path.stem] = img_path
        txt = out_dir / f"{img_path.stem}.txt"
        if txt.exists() and not args.overwrite:
            skipped += 1
        else:
            todo.append((img_path, txt))

    done = 0
    if todo:
        try:
            captioner = get_captioner(args.captioner, **_captioner_options(args))
        except SSPIRError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        with captioner, tqdm(todo, desc="captioning", unit="img", file=sys.stderr) as bar:
            for img_path, txt in bar:
                try:
                    with Image.open(img_path) as im:
                        image = ImageOps.exif_transpose(im)
                        image.load()
                    write_text_atomic(txt, captioner.caption(image)[0])
                    done += 1
                except KeyboardInterrupt:
                    raise
                except Exception as exc:  # report this image, keep captioning the rest
                    failed += 1
                    bar.write(f"failed: {img_path}: {type(exc).__name__}: {exc}", file=sys.stderr)
    print(
        f"captioned {done}, skipped {skipped} (already captioned), failed {failed}; output in {out_dir}",
        file=sys.stderr,
    )
    return 1 if failed else 0
