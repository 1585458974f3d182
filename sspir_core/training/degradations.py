"""Real-ESRGAN second-order degradation (Wang et al. 2021), as SSP-IR/SeeSR make their training pairs.

Why written here rather than imported: the maintained packages that hold it are ``basicsr`` (its last
release imports ``torchvision.transforms.functional_tensor``, gone from current torchvision), the
``basicsr-fixed`` fork (pulls ``tb-nightly``, ``opencv-python``, ``lmdb``, ``yapf``...) and ``realesrgan``
(depends on the broken ``basicsr`` plus ``gfpgan``/``facexlib``). In all of them the pipeline itself lives
inside a training-model class (``RealESRGANModel.feed_data``), and the kernels are drawn from the
process-global ``random``/``numpy`` generators, so "the same pair for the same seed" would mean reseeding
global state in every DataLoader worker. Here every random choice comes from one ``torch.Generator``
seeded per sample, the filtering/noise/resizing run on any torch device (the GPU when training on one),
and JPEG is real libjpeg through ``torchvision.io`` (Real-ESRGAN uses a differentiable approximation).

Two steps: :func:`sample_degradation` draws every parameter (kernels included) on the CPU from a seed;
:func:`apply_degradation` applies them to a ``[3, H, W]`` image in [0, 1] on its device.

Where each setting comes from (official repository ``zyhrainbow/SSP-IR``, a SeeSR fork):

- probabilities and ranges of both orders (kernel types and probabilities, sinc probability, blur sigma,
  beta ranges, resize probabilities and ranges, noise, gray noise, JPEG, second blur 0.8, final sinc 0.8):
  the settings dicts of ``utils_data/make_paired_data.py``, the script that made the official pairs;
- kernel sizes: ``basicsr/data/realesrgan_dataset.py`` draws the size of *both* blur kernels and of the final
  sinc from ``kernel_range`` = odd 7..21 (its ``blur_kernel_size``/``blur_kernel_size2`` options are never
  read), with sinc cutoff U(pi/3, pi) for sizes below 13 and U(pi/5, pi) from 13 up; the final sinc's cutoff
  is always U(pi/3, pi); every kernel is zero-padded to 21x21;
- the order of the steps, the two orders of the last step (p 0.5 each) and the x4 sizes: the
  ``realesrgan_degradation`` function of ``utils_data/make_paired_data.py``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")
PAD_KERNEL = 21  # every kernel is zero-padded to 21x21, as in Real-ESRGAN


@dataclass(frozen=True)
class StageSettings:
    """Ranges and probabilities of one degradation order."""

    blur_prob: float
    max_kernel: int  # kernel sizes are drawn from the odd numbers 7..max_kernel (21 in both orders, official)
    kernel_probs: tuple[float, ...]
    sinc_prob: float
    blur_sigma: tuple[float, float]
    betag: tuple[float, float]
    betap: tuple[float, float]
    resize_probs: tuple[float, float, float]  # up, down, keep
    resize_range: tuple[float, float]
    gaussian_noise_prob: float
    noise_sigma: tuple[float, float]  # on the 0..255 scale
    poisson_scale: tuple[float, float]
    gray_noise_prob: float
    jpeg_range: tuple[float, float]


STAGE1 = StageSettings(
    blur_prob=1.0,
    max_kernel=21,
    kernel_probs=(0.45, 0.25, 0.12, 0.03, 0.12, 0.03),
    sinc_prob=0.1,
    blur_sigma=(0.2, 3.0),
    betag=(0.5, 4.0),
    betap=(1.0, 2.0),
    resize_probs=(0.2, 0.7, 0.1),
    resize_range=(0.15, 1.5),
    gaussian_noise_prob=0.5,
    noise_sigma=(1.0, 30.0),
    poisson_scale=(0.05, 3.0),
    gray_noise_prob=0.4,
    jpeg_range=(30.0, 95.0),
)
STAGE2 = StageSettings(  # max_kernel 21 as stage 1: the official `blur_kernel_size2: 11` is never read
    blur_prob=0.8,
    max_kernel=21,
    kernel_probs=(0.45, 0.25, 0.12, 0.03, 0.12, 0.03),
    sinc_prob=0.1,
    blur_sigma=(0.2, 1.5),
    betag=(0.5, 4.0),
    betap=(1.0, 2.0),
    resize_probs=(0.3, 0.4, 0.3),
    resize_range=(0.3, 1.2),
    gaussian_noise_prob=0.5,
    noise_sigma=(1.0, 25.0),
    poisson_scale=(0.05, 2.5),
    gray_noise_prob=0.4,
    jpeg_range=(30.0, 95.0),
)


@dataclass(frozen=True)
class DegradationSettings:
    scale: int = 4
    stage1: StageSettings = STAGE1
    stage2: StageSettings = STAGE2
    final_sinc_prob: float = 0.8
    final_max_kernel: int = 21


@dataclass
class StageParams:
    """What was drawn for one order (kept so tests and logs can check it)."""

    kernel: torch.Tensor | None  # [21, 21], sums to 1; None = no blur
    kernel_type: str | None
    kernel_size: int | None
    sigma: tuple[float, float] | None
    beta: float | None
    resize_scale: float
    resize_kind: str  # up / down / keep
    resize_mode: str
    noise: str  # gaussian / poisson
    noise_level: float  # sigma (0..255 scale) or Poisson scale
    gray_noise: bool
    jpeg_quality: int
    cutoff: float | None = None  # sinc kernels: the cutoff frequency (radians per pixel)


@dataclass
class DegradationParams:
    stage1: StageParams
    stage2: StageParams
    final_kernel: torch.Tensor  # sinc or a pulse (identity)
    final_sinc: bool
    final_resize_mode: str
    jpeg_last: bool  # order of the last step: (resize+sinc) then JPEG, or JPEG then (resize+sinc)
    final_jpeg_quality: int
    noise_seed: int
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ kernels


def _grid(size: int) -> torch.Tensor:
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    return torch.stack([xx, yy], dim=-1)  # [k, k, 2] as (x, y)


def _quadratic_form(size: int, sig_x: float, sig_y: float, theta: float) -> torch.Tensor:
    """``[x y] Sigma^-1 [x y]^T`` per grid point, Sigma = R diag(sx^2, sy^2) R^T."""
    c, s = math.cos(theta), math.sin(theta)
    rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    sigma = rot @ torch.diag(torch.tensor([sig_x**2, sig_y**2], dtype=torch.float64)) @ rot.T
    inv = torch.linalg.inv(sigma)
    g = _grid(size)
    return torch.einsum("hwi,ij,hwj->hw", g, inv, g)


def gaussian_kernel(size: int, sig_x: float, sig_y: float, theta: float) -> torch.Tensor:
    k = torch.exp(-0.5 * _quadratic_form(size, sig_x, sig_y, theta))
    return k / k.sum()


def generalized_gaussian_kernel(size: int, sig_x: float, sig_y: float, theta: float, beta: float) -> torch.Tensor:
    k = torch.exp(-0.5 * _quadratic_form(size, sig_x, sig_y, theta) ** beta)
    return k / k.sum()


def plateau_kernel(size: int, sig_x: float, sig_y: float, theta: float, beta: float) -> torch.Tensor:
    k = 1.0 / (_quadratic_form(size, sig_x, sig_y, theta) ** beta + 1.0)
    return k / k.sum()


def sinc_kernel(cutoff: float, size: int) -> torch.Tensor:
    """2-D circular low-pass (jinc) kernel: ``cutoff * J1(cutoff r) / (2 pi r)``, ``cutoff^2/(4 pi)`` at r = 0."""
    r = _grid(size).norm(dim=-1)
    safe = torch.where(r == 0, torch.ones_like(r), r)
    k = cutoff * torch.special.bessel_j1(cutoff * safe) / (2 * math.pi * safe)
    k = torch.where(r == 0, torch.full_like(r, cutoff**2 / (4 * math.pi)), k)
    return k / k.sum()


def pad_kernel(k: torch.Tensor, size: int = PAD_KERNEL) -> torch.Tensor:
    p = (size - k.shape[-1]) // 2
    return F.pad(k, (p, p, p, p))


def pulse_kernel(size: int = PAD_KERNEL) -> torch.Tensor:
    k = torch.zeros(size, size, dtype=torch.float64)
    k[size // 2, size // 2] = 1.0
    return k


# ------------------------------------------------------------------------------------------ sampling


class _Draw:
    """Uniform / choice draws from one CPU generator (the only randomness of a sample's parameters)."""

    def __init__(self, seed: int):
        self.g = torch.Generator().manual_seed(int(seed))

    def uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=self.g, dtype=torch.float64))

    def choice(self, items, probs=None):
        items = list(items)
        w = torch.tensor(probs if probs is not None else [1.0] * len(items), dtype=torch.float64)
        return items[int(torch.multinomial(w, 1, generator=self.g))]

    def coin(self, p: float) -> bool:
        return self.uniform(0.0, 1.0) < p


def _kernel_sizes(max_kernel: int) -> list[int]:
    return list(range(7, max_kernel + 1, 2))


def _sample_blur(
    d: _Draw, s: StageSettings
) -> tuple[torch.Tensor, str, int, tuple[float, float] | None, float | None, float | None]:
    size = d.choice(_kernel_sizes(s.max_kernel))
    if d.coin(s.sinc_prob):  # the official cutoff rule for kernels of 7..21 (stronger low-pass when large)
        cutoff = d.uniform(math.pi / 3, math.pi) if size < 13 else d.uniform(math.pi / 5, math.pi)
        return pad_kernel(sinc_kernel(cutoff, size)), "sinc", size, None, None, cutoff
    kind = d.choice(KERNEL_TYPES, s.kernel_probs)
    sig_x = d.uniform(*s.blur_sigma)
    iso = kind.endswith("iso") and not kind.endswith("aniso")
    sig_y = sig_x if iso else d.uniform(*s.blur_sigma)
    theta = 0.0 if iso else d.uniform(-math.pi, math.pi)
    beta = None
    if kind.startswith("generalized"):
        beta = d.uniform(s.betag[0], 1.0) if d.coin(0.5) else d.uniform(1.0, s.betag[1])
        k = generalized_gaussian_kernel(size, sig_x, sig_y, theta, beta)
    elif kind.startswith("plateau"):
        beta = d.uniform(s.betap[0], 1.0) if d.coin(0.5) else d.uniform(1.0, s.betap[1])
        k = plateau_kernel(size, sig_x, sig_y, theta, beta)
    else:
        k = gaussian_kernel(size, sig_x, sig_y, theta)
    return pad_kernel(k), kind, size, (sig_x, sig_y), beta, None


def _sample_stage(d: _Draw, s: StageSettings) -> StageParams:
    kernel = kind = size = sigma = beta = cutoff = None
    if d.coin(s.blur_prob):
        kernel, kind, size, sigma, beta, cutoff = _sample_blur(d, s)
    resize_kind = d.choice(("up", "down", "keep"), s.resize_probs)
    scale = {
        "up": lambda: d.uniform(1.0, s.resize_range[1]),
        "down": lambda: d.uniform(s.resize_range[0], 1.0),
        "keep": lambda: 1.0,
    }[resize_kind]()
    mode = d.choice(RESIZE_MODES)
    gaussian = d.coin(s.gaussian_noise_prob)
    level = d.uniform(*s.noise_sigma) if gaussian else d.uniform(*s.poisson_scale)
    gray = d.coin(s.gray_noise_prob)
    quality = int(round(d.uniform(*s.jpeg_range)))
    return StageParams(
        kernel,
        kind,
        size,
        sigma,
        beta,
        scale,
        resize_kind,
        mode,
        "gaussian" if gaussian else "poisson",
        level,
        gray,
        quality,
        cutoff,
    )


def sample_degradation(seed: int, settings: DegradationSettings = DegradationSettings()) -> DegradationParams:
    """Every random choice of one second-order degradation, from ``seed`` alone."""
    d = _Draw(seed)
    stage1 = _sample_stage(d, settings.stage1)
    stage2 = _sample_stage(d, settings.stage2)
    final_sinc = d.coin(settings.final_sinc_prob)
    if final_sinc:
        size = d.choice(_kernel_sizes(settings.final_max_kernel))
        final_kernel = pad_kernel(sinc_kernel(d.uniform(math.pi / 3, math.pi), size))
    else:
        final_kernel = pulse_kernel()
    mode = d.choice(RESIZE_MODES)
    jpeg_last = d.coin(0.5)
    quality = int(round(d.uniform(*settings.stage2.jpeg_range)))
    noise_seed = int(torch.randint(0, 2**62, (), generator=d.g))
    return DegradationParams(stage1, stage2, final_kernel, final_sinc, mode, jpeg_last, quality, noise_seed)


# ------------------------------------------------------------------------------------------ applying


def filter2d(img: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve ``[C, H, W]`` with one 2-D kernel per channel, reflect padding (as Real-ESRGAN's filter2D)."""
    k = kernel.to(img.device, img.dtype)
    p = k.shape[-1] // 2
    mode = "reflect" if p < min(img.shape[-2:]) else "replicate"  # reflect needs the image wider than the pad
    x = F.pad(img[None], (p, p, p, p), mode=mode)
    c = img.shape[0]
    return F.conv2d(x, k.expand(c, 1, *k.shape), groups=c)[0]


def _resize(img: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    size = (max(1, size[0]), max(1, size[1]))
    if tuple(img.shape[-2:]) == size:
        return img
    kwargs = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(img[None], size=size, mode=mode, **kwargs)[0]


def _gray(img: torch.Tensor) -> torch.Tensor:
    w = torch.tensor([0.299, 0.587, 0.114], device=img.device, dtype=img.dtype).view(3, 1, 1)
    return (img * w).sum(0, keepdim=True)


def gaussian_noise(img: torch.Tensor, sigma: float, gray: bool, g: torch.Generator) -> torch.Tensor:
    shape = (1, *img.shape[1:]) if gray else img.shape
    noise = torch.randn(shape, generator=g, device=img.device, dtype=img.dtype) * (sigma / 255.0)
    return (img + noise).clamp(0, 1)


def poisson_noise(img: torch.Tensor, scale: float, gray: bool, g: torch.Generator) -> torch.Tensor:
    """Shot noise with as many levels as the (8-bit quantised) image has distinct values, times ``scale``."""
    src = _gray(img) if gray else img
    src = (src.clamp(0, 1) * 255).round() / 255
    levels = 2 ** math.ceil(math.log2(max(2, int(torch.unique(src).numel()))))
    noisy = torch.poisson(src * levels, generator=g) / levels
    return (img + (noisy - src) * scale).clamp(0, 1)


def jpeg(img: torch.Tensor, quality: int) -> torch.Tensor:
    """Real JPEG round trip: libjpeg through torchvision (nvJPEG when the image is on CUDA), else Pillow."""
    u8 = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    try:
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its codecs; Pillow takes over when they go
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import decode_jpeg, encode_jpeg

            try:
                out = decode_jpeg(encode_jpeg(u8, quality=int(quality)), device=img.device)
            except RuntimeError:  # no GPU codec in this build: through the CPU
                out = decode_jpeg(encode_jpeg(u8.cpu(), quality=int(quality))).to(img.device)
    except (ImportError, AttributeError):
        out = _pillow_jpeg(u8.cpu(), int(quality)).to(img.device)
    return out.to(img.dtype) / 255.0


def _pillow_jpeg(u8: torch.Tensor, quality: int) -> torch.Tensor:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(u8.permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)


def _stage(img: torch.Tensor, p: StageParams, target: tuple[int, int], g: torch.Generator) -> torch.Tensor:
    if p.kernel is not None:
        img = filter2d(img, p.kernel)
    img = _resize(img, (int(target[0] * p.resize_scale), int(target[1] * p.resize_scale)), p.resize_mode)
    if p.noise == "gaussian":
        return gaussian_noise(img, p.noise_level, p.gray_noise, g)
    return poisson_noise(img, p.noise_level, p.gray_noise, g)


def apply_degradation(gt: torch.Tensor, params: DegradationParams, scale: int = 4) -> torch.Tensor:
    """``gt`` ``[3, H, W]`` in [0, 1] (H, W multiples of ``scale``) -> LQ ``[3, H/scale, W/scale]`` (8-bit values)."""
    if gt.ndim != 3 or gt.shape[0] != 3:
        raise ValueError(f"expected one RGB image [3, H, W], got {tuple(gt.shape)}")
    h, w = gt.shape[-2:]
    g = torch.Generator(device=gt.device).manual_seed(params.noise_seed)
    x = _stage(gt.float(), params.stage1, (h, w), g)
    x = jpeg(x, params.stage1.jpeg_quality)
    x = _stage(x, params.stage2, (h // scale, w // scale), g)
    out_size = (h // scale, w // scale)
    if params.jpeg_last:
        x = filter2d(_resize(x, out_size, params.final_resize_mode), params.final_kernel).clamp(0, 1)
        x = jpeg(x, params.final_jpeg_quality)
    else:
        x = jpeg(x, params.final_jpeg_quality)
        x = filter2d(_resize(x, out_size, params.final_resize_mode), params.final_kernel)
    return (x.clamp(0, 1) * 255).round() / 255


def degrade(gt: torch.Tensor, seed: int, settings: DegradationSettings = DegradationSettings()) -> torch.Tensor:
    """LQ for ``gt`` ``[3, H, W]``, bicubic-upsampled back to ``H x W`` (the official ``sr_bicubic``)."""
    lq = apply_degradation(gt, sample_degradation(seed, settings), settings.scale)
    return F.interpolate(lq[None], size=gt.shape[-2:], mode="bicubic", align_corners=False)[0].clamp(0, 1)


# ------------------------------------------------------------------------------------------ target


def usm_sharpen(img: torch.Tensor, weight: float = 0.5, threshold: float = 10.0, radius: int = 50) -> torch.Tensor:
    """Unsharp mask as Real-ESRGAN sharpens its GT targets (Gaussian 51x51, sigma 8, soft threshold mask).

    basicsr's ``USMSharp`` (``basicsr/utils/img_process_util.py`` in XPixelGroup/BasicSR) with its defaults,
    applied to the GT before degrading in the official ``utils_data/make_paired_data.py`` (``use_usm=True``).
    """
    size = radius + 1 if radius % 2 == 0 else radius
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8  # OpenCV's sigma for a given size
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g1 = torch.exp(-(ax**2) / (2 * sigma**2))
    g1 = g1 / g1.sum()
    k = torch.outer(g1, g1)
    blur = filter2d(img, k)
    residual = img - blur
    mask = (residual.abs() * 255 > threshold).to(img.dtype)
    soft = filter2d(mask, k)
    sharp = (img + weight * residual).clamp(0, 1)
    return soft * sharp + (1 - soft) * img
