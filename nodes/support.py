"""Pure helpers behind the ComfyUI nodes: choices, list handling, previews. Never imports ComfyUI.

The node classes in ``nodes/`` read ComfyUI's state (device, VRAM mode) and pass it in as plain values,
so everything here is testable and usable outside ComfyUI.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from sspir_core.captioners.text import normalize_captions
from sspir_core.errors import InputError, OptionError
from sspir_core.image_io import ImageWithAlpha, comfy_to_bchw
from sspir_core.restore.options import LIMITS, check_tiling

OFFLOAD_CHOICES = ("auto", "on", "off")


# ------------------------------------------------------------------------------------- offload


def choose_offload(requested: str, low_vram: bool, device: torch.device) -> bool:
    """``auto``: offload between stages when the host runs in a low-VRAM mode; never on the CPU."""
    if requested not in OFFLOAD_CHOICES:
        raise InputError(f"offload {requested!r}: choose one of {', '.join(OFFLOAD_CHOICES)}")
    if device.type == "cpu":
        return False
    return low_vram if requested == "auto" else requested == "on"


# ------------------------------------------------------------------------------------- list inputs


def single(name: str, values: Any) -> Any:
    """One value from an input that a list-input node receives as a list; several different ones are an error."""
    if not isinstance(values, list):
        return values
    if not values:
        raise InputError(f"input {name!r} is empty")
    first = values[0]
    for v in values[1:]:
        same = v is first or (type(v) is type(first) and not isinstance(v, torch.Tensor) and v == first)
        if not same:
            raise InputError(
                f"input {name!r} got {len(values)} different values from a list output; it takes one value"
            )
    return first


def flatten_strings(values: Any) -> list[str] | None:
    """Captions as they reach a list-input node: a str, or lists (of lists) of str -> flat list; None stays None."""
    if values is None:
        return None
    if isinstance(values, str):
        return [values]
    out: list[str] = []
    for v in values:
        if v is None:
            continue
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, Iterable):
            out.extend(flatten_strings(v) or [])
        else:
            raise InputError(f"a caption must be text, got {type(v).__name__}: connect a STRING output")
    return out


def captions_for_batch(values: Any, batch: int) -> list[str]:
    """Exactly ``batch`` clean captions from a caption input: one string is shared, a list needs one per image."""
    return normalize_captions(flatten_strings(values) or [""], batch)


def images_from_list(values: Any) -> ImageWithAlpha:
    """ComfyUI IMAGE input(s) -> one ``[B,3,H,W]`` batch (+ alpha): batches of the same size are concatenated."""
    tensors = values if isinstance(values, list) else [values]
    if not tensors:
        raise InputError("no image given")
    parts = [comfy_to_bchw(t) for t in tensors]
    sizes = {tuple(p.rgb.shape[-2:]) for p in parts}
    if len(sizes) > 1:
        shown = ", ".join(f"{w}x{h}" for h, w in sorted(sizes))
        raise InputError(f"got image batches of different sizes ({shown}); restore them in separate runs")
    rgb = torch.cat([p.rgb for p in parts])
    if all(p.alpha is None for p in parts):
        return ImageWithAlpha(rgb, None)
    alpha = torch.cat([p.alpha if p.alpha is not None else torch.ones_like(p.rgb[:, :1]) for p in parts])
    return ImageWithAlpha(rgb, alpha)


TILE_STEP = 8
"""The sampler node's ``tile`` (latent px) moves in steps of 8: SD's UNet halves a tile three times, so a
multiple of 8 is the smallest tile it takes without padding inside; 0 means never tile."""
VAE_TILE_STEP = 64
"""``vae_tile`` (pixels) in steps of 64: 8 latent px, the VAE decoder's own smallest tile; 0 means never tile."""


def _known(name: str, value: Any, problems: dict[str, str]) -> int | float | None:
    """A widget's one value (None when it comes through a link); a list of several or a wrong type is a problem
    of that widget."""
    try:
        value = single(name, value)
    except InputError as exc:
        problems[name] = str(exc)
        return None
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        problems[name] = f"{name} must be a number, got {value!r}"
        return None
    return value


def tiling_widget_problems(tile: Any = None, tile_overlap: Any = None, vae_tile: Any = None) -> dict[str, str]:
    """What is wrong with the sampler nodes' tiling widgets, by widget (checked when ComfyUI queues the prompt;
    empty if nothing). A value that arrives through a link (None while validating) or as a list (list-input
    nodes) is checked as far as it is known. ``tile_overlap`` not below ``tile`` is the overlap's problem: the
    library names it so (:class:`OptionError`'s ``option``)."""
    problems: dict[str, str] = {}
    values = {
        name: _known(name, value, problems)
        for name, value in (("tile", tile), ("tile_overlap", tile_overlap), ("vae_tile", vae_tile))
    }
    for name, value in values.items():
        if value is not None and not isinstance(value, int):
            problems[name] = f"{name} must be an integer, got {value!r}"
    for name, step in (("tile", TILE_STEP), ("vae_tile", VAE_TILE_STEP)):
        value = values[name]
        if name not in problems and value and value % step:
            problems[name] = (
                f"{name} must be 0 (never tile) or a multiple of {step}, got {value}: "
                f"try {max(step, value // step * step)}"
            )
    tile, overlap, vae = (None if name in problems else values[name] for name in values)
    checks = [
        (tile, 0, None) if tile else None,
        (None, overlap, None) if overlap is not None else None,
        (None, 0, vae) if vae else None,
    ]
    if tile and overlap is not None:
        checks.append((tile, overlap, None))  # after each alone: the pair's problem only when both are fine
    for args in filter(None, checks):
        try:
            check_tiling(*args)
        except OptionError as exc:
            problems.setdefault(exc.option, str(exc))
    return problems


OWN_SETTING = 0
"""The sampler widgets' steps/cfg value that means "the checkpoint's own" (paper 50 / 7.5; one-step 1 / off)."""


def sampling_widget_problems(steps: Any = None, cfg: Any = None) -> dict[str, str]:
    """What is wrong with the steps/cfg widgets when the prompt is queued, by widget. Their widgets start at
    :data:`OWN_SETTING`, below the library's bounds (``LIMITS``), so a value between the two is refused here
    with the library's own bounds rather than failing when the sampler runs."""
    problems: dict[str, str] = {}
    for name, value in (("steps", steps), ("cfg", cfg)):
        value = _known(name, value, problems)
        if value is None or value == OWN_SETTING:
            continue
        low, high = LIMITS[name]
        if not low <= value <= high:
            problems[name] = (
                f"{name} must be {OWN_SETTING} (the checkpoint's own) or between {low:g} and {high:g}, got {value!r}"
            )
    return problems


def problems_message(problems: dict[str, str]) -> bool | str:
    """A node's ``validate_inputs`` result: True, or every widget's problem. ComfyUI 0.3.75 attaches this text
    to each input the function takes; ``host.attach_errors_to_widgets`` puts each problem on its own widget."""
    return "; ".join(problems.values()) or True


def target_size(width: int, height: int) -> tuple[int, int] | None:
    """``(width, height)`` when both are set, None when both are 0 (use the upscale factor)."""
    width, height = int(width), int(height)
    if width == 0 and height == 0:
        return None
    if width <= 0 or height <= 0:
        raise InputError(
            f"width={width}, height={height}: set both (the exact output size) or leave both at 0 to use upscale"
        )
    return width, height


# ------------------------------------------------------------------------------------- previews


def structure_preview(
    rgbs: Sequence[torch.Tensor], box: tuple[int, int, int, int], padded: tuple[int, int]
) -> torch.Tensor:
    """The Processor's RGB predictions (in [-1, 1], one per scale) as viewable images at the output size.

    Returns ``[B * scales, 3, H, W]`` in [0, 1], image-major (all scales of image 0, then image 1, ...),
    each scale cut to the real image (no padding) and enlarged with nearest-neighbour so pixels stay visible.
    """
    if not rgbs:
        raise InputError("this SSP-IR model's Processor has no RGB heads, so there is no structure preview")
    y0, y1, x0, x1 = box
    ph, pw = padded
    views = []
    for r in rgbs:
        sy, sx = r.shape[-2] / ph, r.shape[-1] / pw
        crop = r[
            ...,
            int(y0 * sy) : max(int(y0 * sy) + 1, round(y1 * sy)),
            int(x0 * sx) : max(int(x0 * sx) + 1, round(x1 * sx)),
        ]
        up = F.interpolate(crop.float(), size=(y1 - y0, x1 - x0), mode="nearest")
        views.append(((up + 1) / 2).clamp(0, 1).cpu())
    return torch.stack(views, dim=1).flatten(0, 1)


# ------------------------------------------------------------------------------------- model folders


def merge_folder_entry(
    existing: tuple[Sequence[str], Iterable[str]] | None, default_path: str, extensions: Iterable[str]
) -> tuple[list[str], set[str]]:
    """A ``folder_paths`` entry with the default folder added: paths from extra_model_paths.yaml are kept."""
    paths = list(existing[0]) if existing else []
    if default_path not in paths:
        paths.insert(0, default_path)
    exts = set(existing[1]) if existing else set()
    return paths, exts | set(extensions)


def _is_official_checkpoint(folder: Path) -> bool:
    return (folder / "unet").is_dir() and (folder / "controlnet").is_dir()


def _walk(roots: Iterable[str | Path]) -> Iterator[tuple[Path, Path]]:
    """(root, folder) for every folder under the existing roots, sorted, following no symlinked loops."""
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        for dirpath, dirnames, _ in os.walk(root, followlinks=True):
            dirnames.sort()
            yield root, Path(dirpath)


def list_sspir_choices(roots: Iterable[str | Path]) -> list[str]:
    """SSP-IR weights under the ``sspir`` folders: compact ``.safetensors`` files and ``checkpoint-N/`` folders
    (official layout: ``unet/`` + ``controlnet/``), as paths relative to their root; files inside those folders
    are not listed on their own."""
    out: list[str] = []
    seen_official: list[Path] = []
    for root, folder in _walk(roots):
        if any(folder.is_relative_to(f) for f in seen_official):
            continue
        if _is_official_checkpoint(folder):
            seen_official.append(folder)
            if folder != root:
                out.append(folder.relative_to(root).as_posix())
            continue
        out += [
            (folder / f).relative_to(root).as_posix()
            for f in sorted(os.listdir(folder))
            if f.endswith((".safetensors", ".sft")) and (folder / f).is_file()
        ]
    return sorted(dict.fromkeys(out))


def list_model_folders(roots: Iterable[str | Path], marker: str) -> list[str]:
    """Sub-folders (any depth) that hold ``marker`` (e.g. ``config.json``, ``model_index.json``), relative to their
    root."""
    out = [
        folder.relative_to(root).as_posix()
        for root, folder in _walk(roots)
        if folder != root and (folder / marker).is_file()
    ]
    return sorted(dict.fromkeys(out))


def resolve_in_roots(roots: Iterable[str | Path], name: str, what: str, folder_name: str) -> Path:
    """The file or folder ``name`` in the first root that has it; names that leave the root are refused."""
    rel = Path(name)
    if not name or rel.is_absolute() or ".." in rel.parts:
        raise InputError(f"{what}: {name!r} is not a name from the {folder_name} folder list")
    roots = [Path(r) for r in roots]
    for root in roots:
        if (root / rel).exists():
            return root / rel
    shown = ", ".join(str(r) for r in roots) or "(no folders registered)"
    raise InputError(
        f"{what}: {name!r} was not found in the {folder_name} folders ({shown}); "
        "put it there and press R (refresh) in ComfyUI, or pick another"
    )
