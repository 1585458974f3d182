"""Keep freed heap memory in the process instead of handing it back to the OS after every tensor (glibc).

PyTorch's CPU allocator is plain ``malloc``. glibc serves blocks over its mmap threshold (at most 32 MB)
with a fresh ``mmap`` and unmaps them on free, so every large activation of a denoising step (an SD1.5
GEGLU output at 512 px is 84 MB) costs a page fault per 4 KiB page and the kernel zeroes the pages again:
measured at SD1.5 256 px, 0.65 M page faults and 1.6 s of system time per 6 s step. Serving everything
from the heap and never trimming it removes that work and changes no number.

The usual fix is to preload jemalloc or tcmalloc (what Intel's PyTorch launcher does); that needs a
system library and an ``LD_PRELOAD`` set before Python starts. glibc's own ``mallopt`` gives the same
effect from inside the process with no dependency, so the ``sspir`` command calls :func:`keep_freed_memory`
at start (it owns its process; ``SSPIR_KEEP_FREED_MEMORY=0`` turns it off). The price: memory freed by
a finished image is reused by the next one but not returned to the OS before the process exits (the
peak is unchanged). The library and the ComfyUI nodes never call it: a host process is not ours to
retune. ComfyUI CPU users can start ComfyUI with ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736``
for the same effect.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

ENV_SWITCH = "SSPIR_KEEP_FREED_MEMORY"

# glibc <malloc.h> parameter numbers
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4

_GLIBC_DEFAULT_MMAP_MAX = 65536
_GLIBC_MAX_MMAP_THRESHOLD = 32 * 1024 * 1024  # the most glibc's own dynamic threshold grows to (64-bit)
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int: trim only a free heap top over 2 GiB


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it (musl has no mallopt tunables we rely on)
        return libc
    except (OSError, AttributeError):
        return None


def _mallopt(libc: ctypes.CDLL, settings: dict[int, int]) -> bool:
    return all(libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1 for param, value in settings.items())


def keep_freed_memory(enable: bool = True) -> bool:
    """Serve all allocations from the heap and never trim it (``enable``), or go back to glibc's mmap use.

    Returns True when the setting was applied (Linux with glibc), False elsewhere (nothing changed).
    ``enable=False`` restores mmap for large blocks with glibc's largest dynamic threshold, the best case
    of the default behaviour (glibc cannot be put back into its adaptive mode once set): a conservative
    baseline for side-by-side timings.
    """
    libc = _libc()
    if libc is None:
        return False
    if enable:
        return _mallopt(libc, {_M_MMAP_MAX: 0, _M_TRIM_THRESHOLD: _NEVER_TRIM})
    return _mallopt(
        libc,
        {
            _M_MMAP_MAX: _GLIBC_DEFAULT_MMAP_MAX,
            _M_MMAP_THRESHOLD: _GLIBC_MAX_MMAP_THRESHOLD,
            _M_TRIM_THRESHOLD: 2 * _GLIBC_MAX_MMAP_THRESHOLD,
        },
    )


def keep_freed_memory_from_env() -> bool:
    """:func:`keep_freed_memory` unless ``SSPIR_KEEP_FREED_MEMORY=0`` (what the ``sspir`` command runs at start)."""
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return keep_freed_memory(True)


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def heap_bytes() -> int | None:
    """Bytes the main heap holds from the OS (glibc >= 2.33 ``mallinfo2().arena``), None where unknown."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = _MallInfo2
    return int(libc.mallinfo2().arena)


def prefault_heap(nbytes: int) -> None:
    """Grow the kept heap to ``nbytes`` and touch it once, as the first image of a run leaves it.

    For side-by-side timings only: after a run with glibc's default (heap handed back), the next run
    with the kept heap would otherwise pay the first image's page faults in a step meant to show the
    steady state of later steps and images.
    """
    libc = _libc()
    if libc is None or nbytes <= 0:
        return
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    ptr = libc.malloc(ctypes.c_size_t(nbytes))
    if ptr:
        ctypes.memset(ptr, 0, nbytes)
        libc.free(ptr)
