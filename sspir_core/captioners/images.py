"""Image inputs for captioners: PIL images, numpy arrays or torch tensors in, RGB PIL images out.

Tensors follow ComfyUI's IMAGE layout ``[B,H,W,C]`` in 0..1, or ``[B,C,H,W]``; any PIL mode is accepted.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from PIL import Image

from ..errors import InputError

_CHANNEL_COUNTS = (1, 3, 4)


def _is_torch_tensor(obj: Any) -> bool:
    return type(obj).__module__.startswith("torch") and hasattr(obj, "detach")


def _array_to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if arr.dtype == np.uint16:
        return (arr.astype(np.float32) / 257.0).round().astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        # 32-bit integer images (PIL mode "I") usually hold 16-bit data.
        scale = 257.0 if arr.size and arr.max() > 255 else 1.0
        return np.clip(arr.astype(np.float64) / scale, 0, 255).round().astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        return (np.clip(arr, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    raise InputError(f"unsupported image array dtype {arr.dtype}")


def _hwc_array_to_pil(arr: np.ndarray) -> Image.Image:
    arr = _array_to_uint8(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    channels = arr.shape[2]
    if channels == 1:
        return Image.fromarray(arr[:, :, 0]).convert("RGB")
    if channels == 3:
        return Image.fromarray(np.ascontiguousarray(arr))
    return _flatten_alpha(Image.fromarray(np.ascontiguousarray(arr)))


def _array_to_pils(arr: np.ndarray) -> list[Image.Image]:
    if arr.ndim == 2:
        return [_hwc_array_to_pil(arr)]
    if arr.ndim == 3:
        if arr.shape[-1] in _CHANNEL_COUNTS:
            return [_hwc_array_to_pil(arr)]
        if arr.shape[0] in _CHANNEL_COUNTS:
            return [_hwc_array_to_pil(np.moveaxis(arr, 0, -1))]
    if arr.ndim == 4:
        if arr.shape[-1] in _CHANNEL_COUNTS:
            return [_hwc_array_to_pil(a) for a in arr]
        if arr.shape[1] in _CHANNEL_COUNTS:
            return [_hwc_array_to_pil(np.moveaxis(a, 0, -1)) for a in arr]
    raise InputError(
        f"cannot read an image array of shape {tuple(arr.shape)}: expected [H,W], [H,W,C], [C,H,W], "
        "[B,H,W,C] (ComfyUI IMAGE) or [B,C,H,W] with C in 1, 3 or 4"
    )


def _flatten_alpha(img: Image.Image) -> Image.Image:
    """Composite transparent pixels on white, so the captioner does not see arbitrary hidden colours."""
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def pil_to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB (16-bit and float modes are rescaled, alpha is flattened on white)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img)
        if img.mode == "F" and arr.size and arr.max() > 1.0:
            arr = arr / 255.0
        return _hwc_array_to_pil(arr)
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info):
        return _flatten_alpha(img)
    return img.convert("RGB")


def to_pil_images(images: Any) -> list[Image.Image]:
    """Flatten one image, a batch, or a list of either into a list of RGB PIL images."""
    if isinstance(images, Image.Image):
        return [pil_to_rgb(images)]
    if _is_torch_tensor(images):
        return _array_to_pils(images.detach().cpu().float().numpy())
    if isinstance(images, np.ndarray):
        return _array_to_pils(images)
    if isinstance(images, (list, tuple)):
        out: list[Image.Image] = []
        for item in images:
            out.extend(to_pil_images(item))
        if not out:
            raise InputError("no images given")
        return out
    raise InputError(
        f"cannot caption an object of type {type(images).__name__}: give PIL images, numpy arrays or "
        "torch tensors ([B,H,W,C] in 0..1 as in ComfyUI, or [B,C,H,W])"
    )


def image_digest(img: Image.Image) -> str:
    """Content hash of an image (mode, size and pixel bytes): the image part of a cache key."""
    h = hashlib.sha256()
    h.update(f"{img.mode}:{img.size[0]}x{img.size[1]}:".encode())
    h.update(img.tobytes())
    return h.hexdigest()
