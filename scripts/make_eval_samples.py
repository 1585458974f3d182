"""Write the bundled evaluation sample set examples/eval/{gt,lq,bicubic} from scikit-image's photos.

GT: 128x128 centre crop of the photo resized so its short side is 256 px. LQ: the known degradation
"bicubic x1/4 (Pillow, antialiased) + Gaussian noise sigma = 5/255 (seed 0), rounded to 8 bits", 32x32 px.
bicubic: the LQ upscaled x4 with Pillow's bicubic, a baseline that `sspir eval --pred` can score.
Run: python scripts/make_eval_samples.py [OUT]   (needs scikit-image, the test extra)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
GT_SIZE, SCALE, SIGMA = 128, 4, 5.0


def gt_image(name: str) -> Image.Image:
    img = Image.fromarray(getattr(data, name)())
    w, h = img.size
    k = 2 * GT_SIZE / min(w, h)
    img = img.resize((round(w * k), round(h * k)), Image.Resampling.LANCZOS)
    left, top = (img.width - GT_SIZE) // 2, (img.height - GT_SIZE) // 2
    return img.crop((left, top, left + GT_SIZE, top + GT_SIZE))


def degrade(gt: Image.Image, rng: np.random.Generator) -> Image.Image:
    small = np.asarray(gt.resize((GT_SIZE // SCALE,) * 2, Image.Resampling.BICUBIC), dtype=np.float64)
    noisy = np.clip(np.round(small + rng.normal(0.0, SIGMA, small.shape)), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy)


def main(out: Path) -> None:
    rng = np.random.default_rng(0)
    for sub in ("gt", "lq", "bicubic"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        gt = gt_image(name)
        lq = degrade(gt, rng)
        gt.save(out / "gt" / f"{name}.png", optimize=True)
        lq.save(out / "lq" / f"{name}.png", optimize=True)
        lq.resize((GT_SIZE,) * 2, Image.Resampling.BICUBIC).save(out / "bicubic" / f"{name}.png", optimize=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "examples" / "eval")
