"""Training data: the official paired layout or GT-only folders, checked up front, sampled reproducibly.

The paired layout is the one the official ``dataloaders/paired_dataset.py`` (repository ``zyhrainbow/SSP-IR``)
reads: ``gt/``, ``sr_bicubic/`` (the LQ bicubic-upsampled to the GT size) and ``gt_llm_caption/``, with an empty
caption at ``null_text_ratio`` 0.5. It pairs by unsorted ``glob`` (files may pair wrongly); here by file stem.

Every random choice of a sample (which image, crop, caption dropout, degradation) comes from one seed derived
from the run seed and the sample's *position* in the stream of samples, never from worker or process state.
So the stream is the same whatever the number of DataLoader workers, and a resumed run continues it exactly
by starting the sampler at the saved position.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler

from ..errors import InputError
from ..image_io import load_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
GT_DIR, LQ_DIR, CAPTION_DIR = "gt", "sr_bicubic", "gt_llm_caption"
_GRAY_MODES = {"1", "L", "LA", "I;16", "I;16B", "I;16L", "I", "F"}
MAX_RETRIES = 16


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes, platforms and Python's hash randomisation)."""
    digest = hashlib.blake2b(struct.pack(f"<{len(parts)}q", *(int(p) for p in parts)), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise InputError(f"data folder not found: {folder}")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


@dataclass
class ScanReport:
    """Which images a run uses and why the others are left out (printed at start, kept in the output folder)."""

    usable: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    notes: list[tuple[Path, str]] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{len(self.usable)} usable image(s), {len(self.skipped)} skipped"]
        lines += [f"  skipped {p}: {why}" for p, why in self.skipped[:20]]
        if len(self.skipped) > 20:
            lines.append(f"  ... and {len(self.skipped) - 20} more (see data-report.txt)")
        lines += [f"  note {p}: {what}" for p, what in self.notes[:5]]
        return "\n".join(lines)


def check_image(path: Path, min_side: int, allow_gray: bool = False, size_flag: str = "--resolution"
                ) -> tuple[str | None, str | None]:
    """(reason to skip, note) from the file header: unreadable, smaller than a crop, grayscale; 16-bit is a note.

    ``size_flag``: the option that sets the crop size, named in the too-small reason so the user knows what to change.
    """
    try:
        with Image.open(path) as img:
            w, h = img.size
            mode = img.mode
            bands = img.getbands()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        return f"not a readable image ({type(e).__name__}: {e})", None
    if min(w, h) < min_side:
        return f"too small ({w}x{h}; crops are {min_side} px: {size_flag} {min(w, h)} or less would use it)", None
    if not allow_gray and (mode in _GRAY_MODES or len(bands) < 3 and mode != "P"):
        return f"grayscale ({mode}); pass --allow-gray to train on it", None
    if mode.startswith("I;16") or mode in ("I", "RGB;16", "RGBA;16") or _is_png16(path):
        return None, "16-bit: read at full precision"
    return None, None


def _is_png16(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(26)
    return head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) == 26 and head[24] == 16


def scan(files: Sequence[Path], min_side: int, allow_gray: bool = False, size_flag: str = "--resolution") -> ScanReport:
    report = ScanReport()
    for f in files:
        reason, note = check_image(f, min_side, allow_gray, size_flag)
        if reason:
            report.skipped.append((f, reason))
        else:
            report.usable.append(f)
            if note:
                report.notes.append((f, note))
    return report


def read_caption(path: Path) -> str:
    """A caption file's text with newlines stripped (as official); InputError naming the file if not UTF-8.

    Decoding strictly, as ``sspir restore`` reads its caption files: a latin-1 file decoded with replacement
    characters would train on mangled text without a word.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"caption file {path} is not UTF-8 text ({e.reason} at byte {e.start}): "
                         "save it as UTF-8") from None
    return " ".join(text.split())


def _caption_problem(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        read_caption(path)
    except InputError as e:
        return str(e)
    except OSError as e:
        return f"caption file {path} cannot be read ({e.strerror or e})"
    return None


# ------------------------------------------------------------------------------------------ datasets

@dataclass
class Item:
    gt: Path
    lq: Path | None
    caption: Path | None


def paired_items(root: Path) -> list[Item]:
    """``gt/``, ``sr_bicubic/`` and (optional) ``gt_llm_caption/``, paired by file stem; any orphan is an error."""
    gt_dir, lq_dir, cap_dir = root / GT_DIR, root / LQ_DIR, root / CAPTION_DIR
    gts, lqs = {p.stem: p for p in list_images(gt_dir)}, {p.stem: p for p in list_images(lq_dir)}
    problems = [f"{gts[s]} has no partner in {lq_dir}/ (expected {s}.<ext>)" for s in sorted(gts.keys() - lqs.keys())]
    problems += [f"{lqs[s]} has no partner in {gt_dir}/ (expected {s}.<ext>)" for s in sorted(lqs.keys() - gts.keys())]
    captions: dict[str, Path] = {}
    if cap_dir.is_dir():
        captions = {p.stem: p for p in cap_dir.glob("*.txt")}
        problems += [f"{gts[s]} has no caption {cap_dir / (s + '.txt')}" for s in sorted(gts.keys() - captions.keys())]
    if problems:
        more = f" (+{len(problems) - 10} more)" if len(problems) > 10 else ""
        raise InputError(f"{root}: unpaired files in the official layout:\n  " + "\n  ".join(problems[:10]) + more)
    if not gts:
        raise InputError(f"{gt_dir}: no images")
    return [Item(gts[s], lqs[s], captions.get(s)) for s in sorted(gts)]


def gt_items(folders: Sequence[Path], caption_dir: Path | None) -> list[Item]:
    """Images of GT-only folders, with ``<stem>.txt`` captions from ``caption_dir`` when given (else empty)."""
    items = []
    for folder in folders:
        for p in list_images(folder):
            cap = caption_dir / f"{p.stem}.txt" if caption_dir else None
            items.append(Item(p, None, cap if cap is not None and cap.is_file() else None))
    if not items:
        raise InputError(f"no images in {', '.join(map(str, folders))} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return items


def is_paired_layout(root: Path) -> bool:
    return (root / GT_DIR).is_dir() and (root / LQ_DIR).is_dir()


def random_crop(x: torch.Tensor, size: int, g: torch.Generator) -> tuple[torch.Tensor, tuple[int, int]]:
    h, w = x.shape[-2:]
    top = int(torch.randint(0, h - size + 1, (), generator=g))
    left = int(torch.randint(0, w - size + 1, (), generator=g))
    return x[..., top:top + size, left:left + size], (top, left)


class TrainingSet(Dataset):
    """Samples keyed by ``(index, position)``; returns a dict with ``gt`` (and ``lq`` for paired data) in [0, 1]."""

    def __init__(self, items: Sequence[Item], resolution: int, seed: int, caption_dropout: float = 0.5,
                 allow_gray: bool = False, log=None):
        self.log = log or (lambda m: print(m, file=sys.stderr, flush=True))
        self.report = scan([it.gt for it in items], resolution, allow_gray)
        usable = set(self.report.usable)
        self.items = []
        for it in items:
            if it.gt not in usable:
                continue
            reason = _caption_problem(it.caption)
            if reason:  # read once here, so a bad caption is reported before training, not met mid-run
                self.report.usable.remove(it.gt)
                self.report.skipped.append((it.gt, reason))
            else:
                self.items.append(it)
        if not self.items:
            raise InputError(f"no usable training images:\n{self.report.summary()}")
        self.resolution, self.seed, self.caption_dropout = resolution, seed, caption_dropout
        self.failed: set[int] = set()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        """The sample at ``key``; an image (or its caption) that fails to load is replaced by the next one and
        listed in the sample's ``skipped`` as ``(path, reason)``, for the trainer's data-report.txt."""
        index, position = key
        skipped: list[tuple[str, str]] = []
        for attempt in range(MAX_RETRIES):
            i = (index + attempt) % len(self.items)
            if i in self.failed:
                continue
            try:
                return {**self._load(i, derive_seed(self.seed, position)), "skipped": skipped}
            except (InputError, OSError, ValueError) as e:
                self.failed.add(i)
                self.log(f"warning: skipping {self.items[i].gt}: {e}")
                skipped.append((str(self.items[i].gt), str(e)))
        raise InputError(f"{MAX_RETRIES} training images in a row could not be read, last {self.items[i].gt}")

    def _load(self, i: int, seed: int) -> dict:
        item = self.items[i]
        g = torch.Generator().manual_seed(seed)
        gt = load_image(item.gt).rgb[0]
        if item.lq is not None:
            lq = load_image(item.lq).rgb[0]
            if lq.shape[-2:] != gt.shape[-2:]:  # a true low-res partner: bring it to the GT size as sr_bicubic is
                lq = torch.nn.functional.interpolate(lq[None], size=gt.shape[-2:], mode="bicubic")[0].clamp(0, 1)
            both, _ = random_crop(torch.cat([gt, lq]), self.resolution, g)
            gt, lq = both[:3], both[3:]
        else:
            gt, _ = random_crop(gt, self.resolution, g)
            lq = None
        drop = float(torch.rand((), generator=g)) < self.caption_dropout
        caption = "" if drop or item.caption is None else read_caption(item.caption)
        out = {"gt": gt.contiguous(), "caption": caption, "seed": derive_seed(seed, 1), "index": i}
        if lq is not None:
            out["lq"] = lq.contiguous()
        return out


def collate(samples: list[dict]) -> dict:
    out = {"gt": torch.stack([s["gt"] for s in samples]), "caption": [s["caption"] for s in samples],
           "seed": [s["seed"] for s in samples], "index": [s["index"] for s in samples],
           "skipped": [x for s in samples for x in s.get("skipped", [])]}
    if all("lq" in s for s in samples):
        out["lq"] = torch.stack([s["lq"] for s in samples])
    elif any("lq" in s for s in samples):
        raise RuntimeError("mixed paired and unpaired samples in one batch")
    return out


class PositionSampler(Sampler):
    """Endless ``(index, position)`` keys for one process, starting at micro-batch ``start``.

    Global position ``p`` holds image ``perm_e[p mod n]`` with ``e = p div n`` (a fresh permutation per epoch);
    micro-batch ``m`` of process ``r`` (of ``world``) holds positions ``(m*world + r)*batch + 0..batch-1``, so
    the processes see disjoint samples and the stream does not depend on how many workers load it.
    """

    def __init__(self, n: int, batch: int, seed: int, rank: int = 0, world: int = 1, start: int = 0):
        self.n, self.batch, self.seed, self.rank, self.world, self.start = n, batch, seed, rank, world, start
        self._perm: tuple[int, torch.Tensor] | None = None

    def index_at(self, position: int) -> int:
        epoch = position // self.n
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(derive_seed(self.seed, epoch, 7))
            self._perm = (epoch, torch.randperm(self.n, generator=g))
        return int(self._perm[1][position % self.n])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        m = self.start
        while True:
            base = (m * self.world + self.rank) * self.batch
            for j in range(self.batch):
                yield self.index_at(base + j), base + j
            m += 1
