"""Training data: official-layout pairing errors, bad files reported and skipped, the positional sampler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from sspir_core.errors import InputError
from sspir_core.image_io import save_png
from sspir_core.training.data import (
    PositionSampler,
    TrainingSet,
    collate,
    gt_items,
    paired_items,
    read_caption,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _rgb(path: Path, size=(40, 36), seed=0) -> np.ndarray:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return arr


def _layout(root: Path, names=("a", "b", "c")) -> None:
    """Official layout; each LQ is 255 - GT so tests can check GT and LQ are cut at the same place."""
    (root / "sr_bicubic").mkdir(parents=True, exist_ok=True)
    (root / "gt_llm_caption").mkdir(exist_ok=True)
    for i, n in enumerate(names):
        gt = _rgb(root / "gt" / f"{n}.png", seed=i)
        Image.fromarray(255 - gt).save(root / "sr_bicubic" / f"{n}.png")
        (root / "gt_llm_caption" / f"{n}.txt").write_text(f"caption of\n{n}\n")


def test_paired_layout_pairs_by_name(tmp_path):
    _layout(tmp_path, names=("b", "a", "c"))
    items = paired_items(tmp_path)
    assert [(i.gt.name, i.lq.name, i.caption.name) for i in items] == [
        ("a.png", "a.png", "a.txt"),
        ("b.png", "b.png", "b.txt"),
        ("c.png", "c.png", "c.txt"),
    ]


def test_missing_lq_partner_is_named(tmp_path):
    _layout(tmp_path)
    (tmp_path / "sr_bicubic" / "b.png").unlink()
    with pytest.raises(InputError, match=r"gt/b\.png has no partner in .*sr_bicubic"):
        paired_items(tmp_path)


def test_missing_gt_partner_and_caption_are_named(tmp_path):
    _layout(tmp_path)
    _rgb(tmp_path / "sr_bicubic" / "extra.png")
    (tmp_path / "gt_llm_caption" / "c.txt").unlink()
    with pytest.raises(InputError) as e:
        paired_items(tmp_path)
    assert "sr_bicubic/extra.png has no partner" in str(e.value)
    assert "no caption" in str(e.value) and "c.txt" in str(e.value)


def test_paired_crop_is_the_same_window_in_gt_and_lq(tmp_path):
    _layout(tmp_path)
    ds = TrainingSet(paired_items(tmp_path), resolution=16, seed=3, caption_dropout=0.0)
    for pos in range(6):
        s = ds[(pos % 3, pos)]
        assert s["gt"].shape == (3, 16, 16)
        assert torch.allclose(s["lq"], 1 - s["gt"], atol=1e-6)  # the LQ was written as 255 - GT
        assert s["caption"] == f"caption of {ds.items[s['index']].gt.stem}"  # newlines stripped


def test_caption_dropout_rate(tmp_path):
    _layout(tmp_path)
    ds = TrainingSet(paired_items(tmp_path), resolution=16, seed=0, caption_dropout=0.5)
    empty = sum(ds[(0, pos)]["caption"] == "" for pos in range(200))
    assert 60 <= empty <= 140  # binomial(200, 0.5): 5 sigma


def test_same_position_same_sample_different_position_other_crop(tmp_path):
    _rgb(tmp_path / "big.png", size=(200, 150))
    ds = TrainingSet(gt_items([tmp_path], None), resolution=32, seed=1)
    a, b, c = ds[(0, 5)], ds[(0, 5)], ds[(0, 6)]
    assert torch.equal(a["gt"], b["gt"]) and a["seed"] == b["seed"]
    assert not torch.equal(a["gt"], c["gt"]) and a["seed"] != c["seed"]


def test_bad_files_are_reported_and_skipped(tmp_path):
    good = _rgb(tmp_path / "good.png", size=(48, 48))
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (tmp_path / "notimage.jpg").write_text("hello")
    _rgb(tmp_path / "tiny.png", size=(20, 60))
    Image.fromarray(good[..., 0]).save(tmp_path / "gray.png")
    # a 16-bit RGB PNG (values 0..65535): used, at full precision
    wide = torch.linspace(0, 1, 48 * 48 * 3).reshape(1, 3, 48, 48)
    save_png(wide, tmp_path / "deep16.png", bits=16)
    # header fine, pixel data cut off: found by the start-up scan, which decodes every image once
    _rgb(tmp_path / "truncated.png", size=(48, 48), seed=5)
    data = (tmp_path / "truncated.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])

    logged: list[str] = []
    ds = TrainingSet(gt_items([tmp_path], None), resolution=32, seed=0, log=logged.append)
    skipped = {p.name: why for p, why in ds.report.skipped}
    assert set(skipped) == {"corrupt.png", "notimage.jpg", "tiny.png", "gray.png", "truncated.png"}
    assert "too small" in skipped["tiny.png"] and "grayscale" in skipped["gray.png"]
    assert "not a readable image" in skipped["corrupt.png"]
    assert skipped["truncated.png"].startswith("truncated or damaged pixel data (OSError: ")
    assert {p.name for p, _ in ds.report.notes} == {"deep16.png"}
    names = [it.gt.name for it in ds.items]
    assert names == ["deep16.png", "good.png"]
    assert logged == []  # nothing is found again mid-run

    # damaged after the scan: reported when met, and the next image is returned instead
    (tmp_path / "good.png").write_bytes(data[: len(data) // 2])
    s = ds[(1, 0)]
    assert ds.items[s["index"]].gt.name == "deep16.png"
    assert [Path(p).name for p, _ in s["skipped"]] == ["good.png"]
    assert len(logged) == 1 and "good.png" in logged[0]
    deep = ds[(0, 0)]["gt"]
    assert len(torch.unique(deep)) > 256  # 16-bit precision kept (8 bits would allow at most 256 levels)

    ds_gray = TrainingSet(gt_items([tmp_path], None), resolution=32, seed=0, allow_gray=True, log=logged.append)
    assert "gray.png" in [it.gt.name for it in ds_gray.items]


def test_no_usable_images_is_a_clear_error(tmp_path):
    _rgb(tmp_path / "tiny.png", size=(8, 8))
    with pytest.raises(
        InputError,
        match=r"(?s)no usable training images.*tiny.png: too small \(8x8; crops are 32 px: "
        r"--resolution 8 or less would use it\)",
    ):
        TrainingSet(gt_items([tmp_path], None), resolution=32, seed=0)


def test_a_caption_that_is_not_utf8_is_reported_and_its_image_skipped(tmp_path):
    """Decoded strictly, as `sspir restore` reads captions: never trained on with replacement characters."""
    _layout(tmp_path)
    bad = tmp_path / "gt_llm_caption" / "b.txt"
    bad.write_bytes("un caf\xe9 cr\xe8me".encode("latin-1"))
    ds = TrainingSet(paired_items(tmp_path), resolution=16, seed=0, caption_dropout=0.0)
    assert [it.gt.name for it in ds.items] == ["a.png", "c.png"]
    skipped = {p.name: why for p, why in ds.report.skipped}
    assert skipped == {
        "b.png": f"caption file {bad} is not UTF-8 text (invalid continuation byte at byte 6): save it as UTF-8"
    }
    assert "b.png" not in {p.name for p in ds.report.usable}
    assert "skipped" in ds.report.summary() and str(bad) in ds.report.summary()
    with pytest.raises(InputError, match="b.txt is not UTF-8"):
        read_caption(bad)


def test_a_caption_that_breaks_mid_run_is_listed_with_the_sample(tmp_path):
    _layout(tmp_path)
    logged: list[str] = []
    ds = TrainingSet(paired_items(tmp_path), resolution=16, seed=0, caption_dropout=0.0, log=logged.append)
    assert ds[(0, 0)]["skipped"] == []
    bad = tmp_path / "gt_llm_caption" / "a.txt"
    bad.write_bytes(b"\xff\xfe not utf-8")  # changed after the scan
    s = ds[(0, 1)]
    assert ds.items[s["index"]].gt.name == "b.png"  # the next image instead
    assert [(Path(p).name, why) for p, why in s["skipped"]] == [
        ("a.png", f"caption file {bad} is not UTF-8 text (invalid start byte at byte 0): save it as UTF-8")
    ]
    assert any(str(bad) in m for m in logged)
    assert collate([s, ds[(2, 2)]])["skipped"] == s["skipped"]


def test_sampler_shards_are_disjoint_and_cover_each_epoch():
    n, batch, world = 12, 2, 3
    streams = []
    for rank in range(world):
        it = iter(PositionSampler(n, batch, seed=4, rank=rank, world=world))
        streams.append([next(it) for _ in range(batch * 4)])  # 4 micro-batches = 2 epochs over all ranks
    positions = sorted(p for s in streams for _, p in s)
    assert positions == list(range(2 * n))  # every position exactly once
    by_pos = dict(pair[::-1] for s in streams for pair in s)
    for epoch in range(2):
        assert sorted(by_pos[p] for p in range(epoch * n, (epoch + 1) * n)) == list(range(n))
    assert [by_pos[p] for p in range(n)] != [by_pos[p] for p in range(n, 2 * n)]  # reshuffled per epoch


def test_sampler_resumes_mid_stream():
    full = iter(PositionSampler(7, 3, seed=1, rank=1, world=2))
    head = [next(full) for _ in range(3 * 5)]
    resumed = iter(PositionSampler(7, 3, seed=1, rank=1, world=2, start=2))
    assert [next(resumed) for _ in range(9)] == head[6:]


def test_collate(tmp_path):
    _layout(tmp_path)
    ds = TrainingSet(paired_items(tmp_path), resolution=16, seed=0)
    batch = collate([ds[(0, 0)], ds[(1, 1)]])
    assert batch["gt"].shape == (2, 3, 16, 16) and batch["lq"].shape == (2, 3, 16, 16)
    assert len(batch["caption"]) == 2


def _dangling_links(folder: Path) -> None:
    """loop_a.png -> loop_b.png -> loop_a.png, and broken.png -> a file that does not exist."""
    (folder / "loop_a.png").symlink_to(folder / "loop_b.png")
    (folder / "loop_b.png").symlink_to(folder / "loop_a.png")
    (folder / "broken.png").symlink_to(folder / "gone.png")


def test_dangling_links_and_captions_without_an_image_are_listed_paired(tmp_path):
    _layout(tmp_path)
    _dangling_links(tmp_path / "gt")
    (tmp_path / "gt_llm_caption" / "ghost.txt").write_text("a caption whose image was deleted")
    problems: list = []
    items = paired_items(tmp_path, problems)
    assert [i.gt.name for i in items] == ["a.png", "b.png", "c.png"]
    gt = tmp_path / "gt"
    assert problems == [
        (gt / "broken.png", f"broken symlink (its target {gt / 'gone.png'} does not exist)"),
        (gt / "loop_a.png", "symlink loop (the link resolves back to itself)"),
        (gt / "loop_b.png", "symlink loop (the link resolves back to itself)"),
        (tmp_path / "gt_llm_caption" / "ghost.txt", f"caption without an image: no {gt / 'ghost'}.<ext>"),
    ]
    ds = TrainingSet(items, resolution=16, seed=0, problems=problems)
    assert ds.report.skipped == problems and len(ds.report.usable) == 3
    assert "symlink loop" in ds.report.summary()


def test_gt_folders_list_links_orphan_captions_and_unreadable_folders(tmp_path, monkeypatch):
    """Tests run as root, whom chmod does not stop: the unreadable folder is simulated at Path.iterdir."""
    photos, locked, captions = tmp_path / "photos", tmp_path / "locked", tmp_path / "captions"
    _rgb(photos / "a.png")
    _rgb(locked / "z.png")
    _dangling_links(photos)
    captions.mkdir()
    (captions / "a.txt").write_text("caption of a")
    (captions / "zz.txt").write_text("no image has this stem")
    real_iterdir = Path.iterdir

    def iterdir(self):
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    problems: list = []
    items = gt_items([photos, locked], captions, problems)
    assert [(i.gt.name, i.caption) for i in items] == [("a.png", captions / "a.txt")]
    reasons = {p.relative_to(tmp_path).as_posix(): why for p, why in problems}
    assert reasons == {
        "photos/broken.png": f"broken symlink (its target {photos / 'gone.png'} does not exist)",
        "photos/loop_a.png": "symlink loop (the link resolves back to itself)",
        "photos/loop_b.png": "symlink loop (the link resolves back to itself)",
        "locked": "folder cannot be read (PermissionError: Permission denied): nothing in it is used",
        "captions/zz.txt": f"caption without an image: no zz.<ext> in {photos}, {locked}",
    }
    # nothing usable at all: the error says why
    with pytest.raises(InputError, match=r"(?s)no images in .*locked: folder cannot be read"):
        gt_items([locked], None)


def test_the_scan_decodes_each_image_once(tmp_path, monkeypatch):
    """A full decode per image at start-up is the price of catching truncated files there; one, not more."""
    for i in range(3):
        _rgb(tmp_path / f"{i}.png", size=(40, 40), seed=i)
    loads = []
    real_load = ImageFile.ImageFile.load

    def counting_load(self):
        loads.append(self.filename)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    TrainingSet(gt_items([tmp_path], None), resolution=32, seed=0)
    assert loads == [str(tmp_path / f"{i}.png") for i in range(3)]
