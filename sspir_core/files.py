"""Files written whole or not at all, with the permissions any file the user writes gets.

A crash mid-write must never leave a half file under the real name (an emptied ``trainer_state.json`` blocked
``--resume``), and weights must be readable by whoever may read the folder: ``safetensors.torch.save_file``
(0.8) writes through its own temporary file created 0600, so a ComfyUI running as another user, or the
other nodes of a shared training output, could not read them.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` to write; on success it is fsynced and renamed onto ``path``.

    The temporary file is created first with mode 0666 less the umask (as ``open()`` would), and that mode is
    set again after the writer is done, since a writer may replace the file (safetensors does). On an error
    the temporary file is removed and ``path`` keeps what it had.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, mode)
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); filesystems that cannot sync a folder are left as they are."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: str | Path, text: str) -> None:
    """``Path.write_text`` (UTF-8) through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def fsync_tree(folder: str | Path) -> None:
    """fsync every file and folder under ``folder`` (itself included), so what a library wrote with a plain
    ``open``/``torch.save`` is on the disk before a marker file says the folder is complete."""
    folder = Path(folder)
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_file() and not path.is_symlink():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        elif path.is_dir():
            fsync_dir(path)
    fsync_dir(folder)
