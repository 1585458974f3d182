"""Image loading, saving, ComfyUI tensor conversion and LQ preparation.

Everything inside the package works on float32 ``[B, 3, H, W]`` tensors in [0, 1]. This module is the only
place that deals with file modes, bit depths, alpha and ComfyUI's ``[B, H, W, C]`` layout, so the pipeline
never has to. Alpha is never composited: it is returned separately (opacity, 1 = opaque) so a caller can
re-attach it to the restored image; the RGB values are kept as stored.

Readers: Pillow for every format; 16-bit PNGs through torchvision's decoder, because Pillow reduces 16-bit RGB(A) PNGs
to 8 bits (torchvision 0.29 deprecates its decoders: when they are gone, such files fall back to Pillow, correctly
scaled but at 8-bit precision). Writer: Pillow for 8-bit PNG; a small built-in encoder for 16-bit RGB(A) PNG, which
neither Pillow nor torchvision can write. (About 450 lines: the one home of every file and tensor layout detail, kept
together so no other module needs to know any of them.)
"""

from __future__ import annotations

import io
import math
import struct
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

MIN_INPUT_SIDE = 2
"""Smallest accepted input side in pixels: a 1-px line carries no 2-D structure to restore."""
MIN_OUTPUT_SIDE = 8
"""Smallest output side in pixels (after upscaling): one latent pixel of the VAE (8x downsampling)."""
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ImageWithAlpha(NamedTuple):
    """``rgb``: ``[B, 3, H, W]`` float32 in [0, 1]; ``alpha``: ``[B, 1, H, W]`` or None when there is none."""

    rgb: torch.Tensor
    alpha: torch.Tensor | None


class PreparedLQ(NamedTuple):
    """Output of :func:`prepare_lq`.

    ``image``: the resized LQ, padded at the bottom/right to a multiple, ``[B, 3, Hp, Wp]`` in [0, 1].
    ``box``: ``(y0, y1, x0, x1)`` with ``image[..., y0:y1, x0:x1]`` the resized image at exactly the
    requested size (``y0 = x0 = 0``). Crop the restored output with the same box.
    """

    image: torch.Tensor
    box: tuple[int, int, int, int]

    @property
    def size(self) -> tuple[int, int]:
        """Requested output size as ``(width, height)``."""
        y0, y1, x0, x1 = self.box
        return x1 - x0, y1 - y0

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        """Cut the padding off a pixel-space tensor that has the padded size."""
        if tuple(x.shape[-2:]) != tuple(self.image.shape[-2:]):
            raise InputError(
                f"cannot crop a {tuple(x.shape[-2:])} tensor with a box for {tuple(self.image.shape[-2:])} (H, W)"
            )
        y0, y1, x0, x1 = self.box
        return x[..., y0:y1, x0:x1]


# ----------------------------------------------------------------------------------------------- checks


def check_image_tensor(x: torch.Tensor, name: str = "image", channels: int = 3) -> torch.Tensor:
    """Validate a ``[B, channels, H, W]`` float tensor: right rank, non-empty, finite. Returns it as float."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise InputError(f"{name} must be [B, {channels}, H, W] (4 dimensions), got shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise InputError(f"{name} must have {channels} channels in dim 1 ([B, C, H, W]), got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise InputError(f"{name} is empty: shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(f"{name} must be a float tensor in [0, 1], got {x.dtype}")
    if not torch.isfinite(x).all():
        raise InputError(f"{name} contains NaN or infinite values")
    return x.float() if x.dtype != torch.float32 else x


# ----------------------------------------------------------------------------------------------- loading


def _png_bit_depth(path: Path) -> int | None:
    """Bit depth from a PNG's IHDR, or None when the file is not a PNG."""
    with open(path, "rb") as fh:
        head = fh.read(26)
    if len(head) < 26 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    return head[24]


def _split_channels(x: torch.Tensor) -> ImageWithAlpha:
    """``[1, C, H, W]`` with C in 1..4 (gray, gray+alpha, RGB, RGBA) to RGB and optional alpha."""
    c = x.shape[1]
    alpha = x[:, c - 1 :].contiguous() if c in (2, 4) else None
    color = x[:, : c - 1] if c in (2, 4) else x
    rgb = color.expand(-1, 3, -1, -1) if color.shape[1] == 1 else color
    return ImageWithAlpha(rgb.contiguous(), alpha)


def _load_png16(path: Path) -> ImageWithAlpha | None:
    """Full-precision 16-bit PNG via torchvision; None when its decoder is unavailable (caller uses Pillow)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import ImageReadMode, decode_png, read_file

            data = decode_png(read_file(str(path)), mode=ImageReadMode.UNCHANGED, apply_exif_orientation=True)
    except (ImportError, AttributeError, TypeError):
        return None
    x = data.to(torch.int32).float().div_(65535.0).unsqueeze(0)
    return _split_channels(x)


def _cmyk_to_rgb(img: Image.Image) -> Image.Image:
    """Use the embedded ICC profile when there is one (print CMYK is far from naive 255-C)."""
    icc = img.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception:  # a broken profile: fall back to Pillow's plain conversion
            pass
    return img.convert("RGB")


def pil_to_tensor(img: Image.Image) -> ImageWithAlpha:
    """Convert a Pillow image of any common mode to ``[1, 3, H, W]`` float32 in [0, 1] plus optional alpha.

    Integer modes scale by their own range (8-bit by 255; ``I;16*`` and ``I`` by 65535, as 16-bit files
    decode to them); ``F`` is taken as already in [0, 1]; palette transparency becomes alpha.
    """
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img).astype(np.float32)
        x = torch.from_numpy(np.clip(arr, 0, 65535) / 65535.0)[None, None]
        return _split_channels(x)
    if mode == "F":
        x = torch.from_numpy(np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0))[None, None]
        return _split_channels(x)
    if mode in ("P", "PA"):
        img = img.convert("RGBA" if (mode == "PA" or "transparency" in img.info) else "RGB")
    elif mode == "1":
        img = img.convert("L")
    elif mode == "CMYK":
        img = _cmyk_to_rgb(img)
    elif mode in ("RGBa", "La"):  # premultiplied: Pillow un-premultiplies on convert
        img = img.convert("RGBA" if mode == "RGBa" else "LA")
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        try:
            img = img.convert("RGB")
        except (ValueError, OSError) as exc:
            raise InputError(f"unsupported image mode {mode!r}: {exc}") from exc
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    x = torch.from_numpy(arr.astype(np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0)
    return _split_channels(x.contiguous())


def load_image(path: str | Path) -> ImageWithAlpha:
    """Load an image file as ``[1, 3, H, W]`` float32 in [0, 1] (EXIF orientation applied) plus its alpha.

    Raises :class:`InputError` naming the file when it is missing, not an image, truncated or empty.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image file not found: {path}")
    try:
        out = _load_png16(path) if _png_bit_depth(path) == 16 else None
        if out is None:
            with Image.open(path) as img:
                img.load()
                out = pil_to_tensor(ImageOps.exif_transpose(img))
    except UnidentifiedImageError as exc:
        raise InputError(f"{path}: not an image file that can be read (Pillow does not recognise it)") from exc
    except (OSError, RuntimeError, ValueError, Image.DecompressionBombError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{path}: cannot read image ({exc})") from exc
    h, w = out.rgb.shape[-2:]
    if h == 0 or w == 0:
        raise InputError(f"{path}: image has zero size ({w}x{h})")
    return out


class ImageInfo(NamedTuple):
    """What :func:`probe_image` reads from a file's header: size as displayed (EXIF orientation applied),
    frame count (animated GIF/WebP/APNG, multi-page TIFF) and bits per sample (8 or 16)."""

    width: int
    height: int
    frames: int
    bits: int


_EXIF_ORIENTATION = 0x0112
_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def probe_image(path: str | Path) -> ImageInfo:
    """Read size, frame count and bit depth without decoding the pixels (cheap: done for every input first).

    16 bits: a 16-bit PNG, or a file Pillow opens in a 16/32-bit integer or float mode (e.g. 16-bit TIFF).
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            w, h = img.size
            if img.getexif().get(_EXIF_ORIENTATION) in (5, 6, 7, 8):  # rotated by 90 degrees
                w, h = h, w
            frames = int(getattr(img, "n_frames", 1))
            deep = img.mode in _HIGH_DEPTH_MODES
    except FileNotFoundError as exc:
        raise InputError(f"image file not found: {path}") from exc
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"{path}: cannot read image ({exc})") from exc
    bits = 16 if deep or _png_bit_depth(path) == 16 else 8
    return ImageInfo(w, h, frames, bits)


# ------------------------------------------------------------------------------------------ ComfyUI IMAGE


def comfy_to_bchw(image: torch.Tensor) -> ImageWithAlpha:
    """ComfyUI ``IMAGE`` ``[B, H, W, C]`` (C = 1, 3 or 4) to ``[B, 3, H, W]`` float32 plus optional alpha.

    Values are clamped to [0, 1] (some nodes overshoot slightly); uint8 input is scaled by 255. The alpha is
    opacity (1 = opaque), not ComfyUI's MASK (which is 1 - alpha).
    """
    if not isinstance(image, torch.Tensor):
        raise InputError(f"IMAGE must be a torch tensor, got {type(image).__name__}")
    if image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        raise InputError(f"IMAGE must be [B, H, W, C] with C = 1, 3 or 4, got shape {tuple(image.shape)}")
    if image.numel() == 0:
        raise InputError(f"IMAGE is empty: shape {tuple(image.shape)}")
    if image.dtype == torch.uint8:
        x = image.float() / 255.0
    elif image.is_floating_point():
        x = image.float()
    else:
        raise InputError(f"IMAGE must be float in [0, 1] (or uint8), got {image.dtype}")
    if not torch.isfinite(x).all():
        raise InputError("IMAGE contains NaN or infinite values")
    x = x.clamp(0.0, 1.0).permute(0, 3, 1, 2)
    c = x.shape[1]
    rgb = x[:, :3] if c >= 3 else x.expand(-1, 3, -1, -1)
    alpha = x[:, 3:4].contiguous() if c == 4 else None
    return ImageWithAlpha(rgb.contiguous(), alpha)


def bchw_to_comfy(rgb: torch.Tensor, alpha: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, 3, H, W]`` (plus optional ``[B, 1, H, W]`` alpha) to ComfyUI ``IMAGE`` ``[B, H, W, 3|4]`` on CPU."""
    rgb = check_image_tensor(rgb, "image")
    x = rgb
    if alpha is not None:
        alpha = check_image_tensor(alpha, "alpha", channels=1)
        if alpha.shape[0] not in (1, rgb.shape[0]) or alpha.shape[-2:] != rgb.shape[-2:]:
            raise InputError(f"alpha {tuple(alpha.shape)} does not match image {tuple(rgb.shape)}")
        x = torch.cat([rgb, alpha.to(rgb.device).expand(rgb.shape[0], -1, -1, -1)], dim=1)
    return x.clamp(0.0, 1.0).permute(0, 2, 3, 1).contiguous().cpu()


# ----------------------------------------------------------------------------------------------- saving


def _png16_bytes(hwc: np.ndarray) -> bytes:
    """Minimal PNG encoder for 16-bit RGB (color type 2) or RGBA (6): unfiltered rows, zlib level 6."""
    h, w, c = hwc.shape
    color_type = {3: 2, 4: 6}[c]
    rows = hwc.astype(">u2").reshape(h, w * c)
    raw = np.concatenate([np.zeros((h, 1), dtype=np.uint8), rows.view(np.uint8).reshape(h, -1)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return _PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + chunk(b"IEND", b"")


def save_png(image: torch.Tensor, path: str | Path, bits: int = 8, alpha: torch.Tensor | None = None) -> list[Path]:
    """Save ``[B, 3, H, W]`` (or ``[3, H, W]``) in [0, 1] as PNG, 8 or 16 bits per channel.

    One image goes to ``path``; a batch to ``<stem>_0000.png``, ``<stem>_0001.png``, ... Returns the paths.
    ``alpha`` (``[B, 1, H, W]`` or ``[1, 1, H, W]``) is written as an alpha channel. A ``uint8``/``uint16``
    image (the streamed restore output) is written as it is, at its own bit depth (``bits`` is ignored).
    """
    if isinstance(image, torch.Tensor) and image.ndim == 3:
        image = image.unsqueeze(0)
    if isinstance(image, torch.Tensor) and image.dtype in _INTEGER_BITS:
        return _save_integer_png(image, Path(path), alpha)
    if bits not in (8, 16):
        raise InputError(f"PNG bit depth must be 8 or 16, got {bits}")
    x = check_image_tensor(image, "image").detach()
    if alpha is not None:
        if alpha.ndim == 3:
            alpha = alpha.unsqueeze(0)
        alpha = check_image_tensor(alpha, "alpha", channels=1).detach()
        if alpha.shape[0] not in (1, x.shape[0]) or alpha.shape[-2:] != x.shape[-2:]:
            raise InputError(f"alpha {tuple(alpha.shape)} does not match image {tuple(x.shape)}")
        x = torch.cat([x, alpha.to(x.device).expand(x.shape[0], -1, -1, -1)], dim=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    b = x.shape[0]
    paths = [path] if b == 1 else [path.with_name(f"{path.stem}_{i:04d}{path.suffix or '.png'}") for i in range(b)]
    scale = 255.0 if bits == 8 else 65535.0
    data = (x.clamp(0.0, 1.0) * scale).round().permute(0, 2, 3, 1).cpu().numpy()
    for arr, p in zip(data, paths, strict=True):
        if bits == 8:
            Image.fromarray(arr.astype(np.uint8), mode="RGBA" if arr.shape[-1] == 4 else "RGB").save(p, format="PNG")
        else:
            p.write_bytes(_png16_bytes(arr.astype(np.uint16)))
    return paths


_INTEGER_BITS = {torch.uint8: 8, torch.uint16: 16}


def _save_integer_png(image: torch.Tensor, path: Path, alpha: torch.Tensor | None) -> list[Path]:
    """Write already-quantised ``[B, 3, H, W]`` integers without a float copy of the image."""
    bits = _INTEGER_BITS[image.dtype]
    if image.ndim != 4 or image.shape[1] != 3 or image.numel() == 0:
        raise InputError(f"image must be [B, 3, H, W], got shape {tuple(image.shape)}")
    hwc = image.detach().permute(0, 2, 3, 1).cpu()  # free when the tensor is laid out [B, H, W, 3]
    if alpha is not None:
        if alpha.ndim == 3:
            alpha = alpha.unsqueeze(0)
        alpha = check_image_tensor(alpha, "alpha", channels=1).detach()
        if alpha.shape[0] not in (1, image.shape[0]) or alpha.shape[-2:] != image.shape[-2:]:
            raise InputError(f"alpha {tuple(alpha.shape)} does not match image {tuple(image.shape)}")
        a = (alpha.clamp(0.0, 1.0) * (255.0 if bits == 8 else 65535.0)).round().to(image.dtype)
        hwc = torch.cat([hwc, a.permute(0, 2, 3, 1).cpu().expand(image.shape[0], -1, -1, -1)], dim=-1)
    path.parent.mkdir(parents=True, exist_ok=True)
    b = hwc.shape[0]
    paths = [path] if b == 1 else [path.with_name(f"{path.stem}_{i:04d}{path.suffix or '.png'}") for i in range(b)]
    for arr, p in zip(hwc.numpy(), paths, strict=True):
        if bits == 8:
            Image.fromarray(np.ascontiguousarray(arr), mode="RGBA" if arr.shape[-1] == 4 else "RGB").save(
                p, format="PNG"
            )
        else:
            p.write_bytes(_png16_bytes(arr))
    return paths


# ------------------------------------------------------------------------------------------ LQ preparation


def resize_image(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of ``[B, C, H, W]`` to ``size = (H, W)``, clamped to [0, 1]; identity at the same size.

    ``antialias=True`` both ways: it filters when downscaling and makes torch's bicubic equal Pillow's
    (a = -0.5), which the official code used to upscale the LQ image.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp_(0.0, 1.0)


def pad_to_multiple(x: torch.Tensor, multiple: int = 8) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Pad ``[B, C, H, W]`` at the bottom/right to multiples of ``multiple``; returns (padded, crop box).

    Reflect padding continues texture naturally for the VAE and UNet; it needs the pad to be smaller than
    the side, so small images fall back to replicate.
    """
    h, w = x.shape[-2:]
    hp, wp = padded_size(h, w, multiple)
    ph, pw = hp - h, wp - w
    box = (0, h, 0, w)
    if ph == 0 and pw == 0:
        return x, box
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), box


def padded_size(height: int, width: int, multiple: int = 8) -> tuple[int, int]:
    """``(Hp, Wp)``: the size :func:`pad_to_multiple` gives an ``height x width`` image, computed without it."""
    if multiple < 1:
        raise InputError(f"multiple must be >= 1, got {multiple}")
    return height + (-height) % multiple, width + (-width) % multiple


def output_size(
    width: int, height: int, upscale: float = 4.0, target_size: Sequence[int] | None = None
) -> tuple[int, int]:
    """``(width, height)`` of the restored image: ``target_size`` when given, else the input size x ``upscale``."""
    if target_size is not None:
        if len(target_size) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in target_size):
            raise InputError(f"target_size must be (width, height) in positive integers, got {target_size!r}")
        return int(target_size[0]), int(target_size[1])
    if isinstance(upscale, bool) or not (isinstance(upscale, (int, float)) and math.isfinite(upscale) and upscale > 0):
        raise InputError(f"upscale must be a positive number, got {upscale!r}")
    return max(1, round(width * upscale)), max(1, round(height * upscale))


def prepare_lq(
    image: torch.Tensor,
    upscale: float = 4.0,
    target_size: Sequence[int] | None = None,
    multiple: int = 8,
    min_side: int = MIN_OUTPUT_SIDE,
) -> PreparedLQ:
    """Resize the LQ image ``[B, 3, H, W]`` to the output size and pad it to a multiple of ``multiple``.

    The output size is ``target_size = (W, H)`` when given, else ``round(H * upscale) x round(W * upscale)``.
    Returns :class:`PreparedLQ` ``(image, box)``: the padded tensor and the ``(y0, y1, x0, x1)`` box of the
    exact requested size inside it, to crop the restored output back.
    """
    x = check_image_tensor(image, "LQ image")
    out_w, out_h = lq_output_size(x.shape[-1], x.shape[-2], upscale, target_size, min_side)
    resized = resize_image(x, (out_h, out_w))
    padded, box = pad_to_multiple(resized, multiple)
    return PreparedLQ(padded, box)


def lq_output_size(
    width: int,
    height: int,
    upscale: float = 4.0,
    target_size: Sequence[int] | None = None,
    min_side: int = MIN_OUTPUT_SIDE,
) -> tuple[int, int]:
    """``(width, height)`` :func:`prepare_lq` gives a ``width x height`` LQ, with its checks, computed without
    resizing anything (what a node needs to know before it runs)."""
    w, h = int(width), int(height)
    if h < MIN_INPUT_SIDE or w < MIN_INPUT_SIDE:
        raise InputError(
            f"LQ image is {w}x{h} px; it must be at least {MIN_INPUT_SIDE} px on each side "
            f"and at least {min_side} px on each side after upscaling"
        )
    out_w, out_h = output_size(w, h, upscale, target_size)
    how = f"target size {out_w}x{out_h}" if target_size is not None else f"{w}x{h} px x{upscale:g} = {out_w}x{out_h}"
    if out_h < min_side or out_w < min_side:
        raise InputError(
            f"output would be {out_w}x{out_h} px ({how}); it must be at least {min_side} px on each side "
            "after upscaling: use a larger image or a larger upscale factor"
        )
    return out_w, out_h
