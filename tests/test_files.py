"""sspir_core.files is the one atomic writer: the caption cache, `sspir caption` and `sspir restore` go through it
too, so each keeps the old file on a failed write, leaves no temporary file, and writes with the user's umask."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from sspir_core import files
from sspir_core.captioners.cache import CaptionCache


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _no_space(fd: int) -> None:
    raise OSError(28, "No space left on device")


def test_atomic_path_replaces_whole_with_the_umask_mode(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    with files.atomic_path(target) as tmp:
        assert tmp.parent == target.parent and not target.exists()
        tmp.write_bytes(b"abc")
    assert target.read_bytes() == b"abc"
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~_umask()  # as open() would create it
    assert [p.name for p in target.parent.iterdir()] == ["out.bin"]


def test_an_error_in_the_writer_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(ValueError, match="writer failed"):
        with files.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise ValueError("writer failed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_the_caption_cache_writes_through_files(tmp_path, monkeypatch):
    cache = CaptionCache(tmp_path)
    cache.put("ab12", "a red house")
    written = tmp_path / "ab" / "ab12.json"
    assert cache.get("ab12") == "a red house"
    assert stat.S_IMODE(written.stat().st_mode) == 0o666 & ~_umask()  # mkstemp made it 0600 before
    monkeypatch.setattr(files.os, "fsync", _no_space)
    cache.put("ab12", "a blue house")  # a cache that cannot be written is skipped, never fatal
    assert cache.get("ab12") == "a red house"
    assert [p.name for p in written.parent.iterdir()] == ["ab12.json"]


def test_a_restored_image_that_fails_to_save_keeps_the_old_output(tmp_path, monkeypatch):
    from sspir_core.cli.restore import _save

    target = tmp_path / "img.png"
    _save(torch.full((1, 3, 4, 4), 0.5), target, None, 8)
    first = target.read_bytes()
    assert first.startswith(b"\x89PNG")
    monkeypatch.setattr(files.os, "fsync", _no_space)
    with pytest.raises(OSError, match="No space"):
        _save(torch.zeros(1, 3, 4, 4), target, None, 8)
    assert target.read_bytes() == first and [p.name for p in tmp_path.iterdir()] == ["img.png"]
