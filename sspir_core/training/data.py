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

import errno
import hashlib
import os
import struct
import sys
from collections.abc import Callable, Iterator, Sequence
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


Problems = list[tuple[Path, str]]
"""``(path, reason)`` of entries a listing could not use (they go into data-report.txt as ``skipped``)."""


def _entries(folder: Path, problems: Problems | None) -> list[Path]:
    """The folder's entries, sorted; an unreadable folder is a problem (or raised when nobody collects them)."""
    try:
        return sorted(folder.iterdir())
    except OSError as e:
        reason = f"folder cannot be read ({type(e).__name__}: {e.strerror or e}): nothing in it is used"
        if problems is None:
            raise InputError(f"{folder}: {reason}") from None
        problems.append((folder, reason))
        return []


def _dangling(path: Path) -> str | None:
    """Why a directory entry is not a regular file one can open: a symlink loop, a broken symlink, or a stat
    error; None for a regular file (or a folder, which is not an image and not a problem)."""
    try:
        if path.is_dir():
            return None
        path.stat()
        return None if path.is_file() else "not a regular file"
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symlink loop (the link resolves back to itself)"
        if path.is_symlink() and e.errno == errno.ENOENT:
            return f"broken symlink (its target {os.readlink(path)} does not exist)"
        return f"cannot be read ({type(e).__name__}: {e.strerror or e})"


def list_images(folder: Path, problems: Problems | None = None) -> list[Path]:
    """The image files directly in ``folder``, sorted.

    Entries with an image suffix that cannot be opened (symlink loops, broken symlinks) and an unreadable
    folder are appended to ``problems`` with the reason, so data-report.txt names them instead of a silent
    drop; without ``problems`` an unreadable folder raises :class:`InputError`.
    """
    if not folder.is_dir():
        raise InputError(f"data folder not found: {folder}")
    found = []
    for p in _entries(folder, problems):
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        why = _dangling(p)
        if why is None and p.is_file():
            found.append(p)
        elif why is not None and problems is not None:
            problems.append((p, why))
    return found


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


def check_image(
    path: Path, min_side: int, allow_gray: bool = False, size_flag: str = "--resolution"
) -> tuple[str | None, str | None]:
    """(reason to skip, note): unreadable, truncated, smaller than a crop, grayscale; 16-bit is a note.

    The pixels are decoded once here (after the cheap header checks pass), so a file whose header is fine but
    whose data is cut off is skipped at start-up and named in data-report.txt, instead of failing mid-run.
    ``size_flag``: the option that sets the crop size, named in the too-small reason so the user knows what to change.
    """
    try:
        with Image.open(path) as img:
            w, h = img.size
            mode = img.mode
            bands = img.getbands()
            if min(w, h) < min_side:
                return (
                    f"too small ({w}x{h}; crops are {min_side} px: {size_flag} {min(w, h)} or less would use it)"
                ), None
            if not allow_gray and (mode in _GRAY_MODES or len(bands) < 3 and mode != "P"):
                return f"grayscale ({mode}); pass --allow-gray to train on it", None
            try:
                img.load()
            except OSError as e:  # PIL: "image file is truncated (N bytes not processed)", "broken data stream"
                return f"truncated or damaged pixel data ({type(e).__name__}: {e})", None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        return f"not a readable image ({type(e).__name__}: {e})", None
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
        raise InputError(
            f"caption file {path} is not UTF-8 text ({e.reason} at byte {e.start}): save it as UTF-8"
        ) from None
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


def _captions(cap_dir: Path, problems: Problems | None) -> dict[str, Path]:
    """``{stem: caption file}`` of the ``.txt`` files in ``cap_dir`` (dangling links and an unreadable folder
    are problems, as for images)."""
    out = {}
    for p in _entries(cap_dir, problems):
        if p.suffix.lower() != ".txt":
            continue
        why = _dangling(p)
        if why is None and p.is_file():
            out[p.stem] = p
        elif why is not None and problems is not None:
            problems.append((p, why))
    return out


def paired_items(root: Path, problems: Problems | None = None) -> list[Item]:
    """``gt/``, ``sr_bicubic/`` and (optional) ``gt_llm_caption/``, paired by file stem; an image without its
    partner or caption is an error. Files left out (a caption without an image, dangling links, an unreadable
    folder) are appended to ``problems`` for data-report.txt."""
    problems = [] if problems is None else problems
    gt_dir, lq_dir, cap_dir = root / GT_DIR, root / LQ_DIR, root / CAPTION_DIR
    seen = len(problems)
    gts = {p.stem: p for p in list_images(gt_dir, problems)}
    lqs = {p.stem: p for p in list_images(lq_dir, problems)}
    errors = [f"{gts[s]} has no partner in {lq_dir}/ (expected {s}.<ext>)" for s in sorted(gts.keys() - lqs.keys())]
    errors += [f"{lqs[s]} has no partner in {gt_dir}/ (expected {s}.<ext>)" for s in sorted(lqs.keys() - gts.keys())]
    captions: dict[str, Path] = {}
    if cap_dir.is_dir():
        captions = _captions(cap_dir, problems)
        errors += [f"{gts[s]} has no caption {cap_dir / (s + '.txt')}" for s in sorted(gts.keys() - captions.keys())]
        problems += [
            (captions[s], f"caption without an image: no {gt_dir / s}.<ext>")
            for s in sorted(captions.keys() - gts.keys())
        ]
    if errors:
        more = f" (+{len(errors) - 10} more)" if len(errors) > 10 else ""
        also = "".join(f"\n  {p}: {why}" for p, why in problems[seen:])
        raise InputError(f"{root}: unpaired files in the official layout:\n  " + "\n  ".join(errors[:10]) + more + also)
    if not gts:
        raise InputError(f"{gt_dir}: no images" + "".join(f"\n  {p}: {why}" for p, why in problems[seen:]))
    return [Item(gts[s], lqs[s], captions.get(s)) for s in sorted(gts)]


def gt_items(folders: Sequence[Path], caption_dir: Path | None, problems: Problems | None = None) -> list[Item]:
    """Images of GT-only folders, with ``<stem>.txt`` captions from ``caption_dir`` when given (else empty).

    A caption in ``caption_dir`` that matches no image, dangling links and unreadable folders are appended to
    ``problems`` for data-report.txt.
    """
    problems = [] if problems is None else problems
    seen = len(problems)
    items = []
    captions = _captions(caption_dir, problems) if caption_dir is not None and caption_dir.is_dir() else {}
    for folder in folders:
        for p in list_images(folder, problems):
            items.append(Item(p, None, captions.get(p.stem)))
    stems = {it.gt.stem for it in items}
    problems += [
        (captions[s], f"caption without an image: no {s}.<ext> in {', '.join(map(str, folders))}")
        for s in sorted(captions.keys() - stems)
    ]
    if not items:
        raise InputError(
            f"no images in {', '.join(map(str, folders))} (looked for {', '.join(IMAGE_SUFFIXES)})"
            + "".join(f"\n  {p}: {why}" for p, why in problems[seen:])
        )
    return items


def is_paired_layout(root: Path) -> bool:
    return (root / GT_DIR).is_dir() and (root / LQ_DIR).is_dir()


def random_crop(x: torch.Tensor, size: int, g: torch.Generator) -> tuple[torch.Tensor, tuple[int, int]]:
    h, w = x.shape[-2:]
    top = int(torch.randint(0, h - size + 1, (), generator=g))
    left = int(torch.randint(0, w - size + 1, (), generator=g))
    return x[..., top : top + size, left : left + size], (top, left)


class TrainingSet(Dataset):
    """Samples keyed by ``(index, position)``; returns a dict with ``gt`` (and ``lq`` for paired data) in [0, 1]."""

    def __init__(
        self,
        items: Sequence[Item],
        resolution: int,
        seed: int,
        caption_dropout: float = 0.5,
        allow_gray: bool = False,
        log: Callable[[str], None] | None = None,
        problems: Sequence[tuple[Path, str]] = (),
    ):
        """``problems``: what listing the folders left out (see :func:`gt_items`), reported as skipped.
        ``log`` gets one line per image skipped mid-run; the trainer passes a no-op and reports the samples'
        ``skipped`` itself, once per file, because every DataLoader worker holds its own copy of this set."""
        self.log = log or (lambda m: print(m, file=sys.stderr, flush=True))
        self.report = scan([it.gt for it in items], resolution, allow_gray)
        self.report.skipped[:0] = list(problems)
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
    out = {
        "gt": torch.stack([s["gt"] for s in samples]),
        "caption": [s["caption"] for s in samples],
        "seed": [s["seed"] for s in samples],
        "index": [s["index"] for s in samples],
        "skipped": [x for s in samples for x in s.get("skipped", [])],
    }
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
