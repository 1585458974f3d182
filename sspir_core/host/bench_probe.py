"""Bench-only ComfyUI probe: HTTP routes that reset and read the server's peak memory between prompts.

``sspir bench --parts native`` copies this file into its bench server's custom_nodes as
``sspir_bench_probe/__init__.py``; the pack never loads it (nothing imports this module inside ComfyUI but that
copy). It imports no ComfyUI module: the routes are added only when ComfyUI's ``server`` module is already loaded
with a running PromptServer, so importing it anywhere else (the import test walks every sspir_core module) does
nothing.

Routes (registered on ComfyUI's PromptServer at import, only when imported by a running ComfyUI):

- ``GET /sspir_bench/reset``: start a new peak at the memory in use now; returns ``{measure, baseline_bytes}``;
- ``GET /sspir_bench/peak``: the peak since the last reset, ``{measure, baseline_bytes, peak_bytes, ...}``.

Measures: on CUDA ``torch.cuda.max_memory_allocated`` (reset by ``reset_peak_memory_stats``; the baseline is
``memory_allocated``), with ``max_memory_reserved`` beside it; on the CPU the process's peak resident set,
VmHWM from /proc/self/status, reset to the current RSS by writing "5" to /proc/self/clear_refs (Linux >= 4.0)
after the C heap's free memory is trimmed (so the baseline is the live memory, not what the warm-up left).
Where that file cannot be written (not Linux), a thread samples the RSS every 2 ms instead (a short spike between
two samples can be missed), and ``measure`` says so.
"""

from __future__ import annotations

import re
import sys
import threading
import time

CUDA = "cuda max_memory_allocated"
VMHWM = "VmHWM (peak RSS; free heap trimmed, then the peak reset through /proc/self/clear_refs)"
SAMPLED = "RSS sampled every 2 ms (psutil)"


def parse_status(text: str) -> dict[str, int]:
    """The ``Vm*`` lines of a /proc/<pid>/status text, in bytes (the file gives kB)."""
    return {m.group(1): int(m.group(2)) * 1024 for m in re.finditer(r"^(Vm\w+):\s+(\d+)\s+kB\s*$", text, re.M)}


def _proc_status() -> dict[str, int]:
    with open("/proc/self/status") as fh:
        return parse_status(fh.read())


def _trim_heap() -> bool:
    """Hand the C heap's free memory back to the OS (glibc ``malloc_trim``) so the baseline is what is live.

    Without it the next image reuses the memory the warm-up freed but glibc kept, and its RSS peak rises by
    what it needs beyond that, not by what it needs (measured: 0.1 MiB for a whole 32 px restore).
    """
    import ctypes
    import gc

    gc.collect()
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):  # not glibc
        return False


class _Sampler:
    """RSS peak by polling, where the kernel's own peak (VmHWM) cannot be reset."""

    def __init__(self) -> None:
        import psutil

        self._proc = psutil.Process()
        self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(0.002)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, self._proc.memory_info().rss)


class Peaks:
    """Reset and read one peak at a time (the bench waits for each prompt before it reads)."""

    def __init__(self) -> None:
        self.baseline = 0
        self.measure = ""
        self._sampler: _Sampler | None = None

    @staticmethod
    def _cuda_device():
        try:
            import comfy.model_management as mm

            device = mm.get_torch_device()
        except ImportError:  # outside ComfyUI (never when served)
            return None
        return device if getattr(device, "type", None) == "cuda" else None

    def reset(self) -> dict:
        device = self._cuda_device()
        if device is not None:
            import torch

            torch.cuda.synchronize(device)
            self.baseline = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            self.measure = CUDA
        else:
            if self._sampler is not None:
                self._sampler.stop()
                self._sampler = None
            _trim_heap()
            try:
                with open("/proc/self/clear_refs", "w") as fh:
                    fh.write("5")  # VmHWM := VmRSS now
                self.baseline = _proc_status()["VmRSS"]
                self.measure = VMHWM
            except (OSError, KeyError):
                self._sampler = _Sampler()
                self.baseline = self._sampler.peak
                self.measure = SAMPLED
        return {"measure": self.measure, "baseline_bytes": self.baseline}

    def read(self) -> dict:
        out = {"measure": self.measure, "baseline_bytes": self.baseline}
        if self.measure == CUDA:
            import torch

            device = self._cuda_device()
            torch.cuda.synchronize(device)
            out.update(
                peak_bytes=torch.cuda.max_memory_allocated(device),
                reserved_peak_bytes=torch.cuda.max_memory_reserved(device),
            )
        elif self.measure == VMHWM:
            out["peak_bytes"] = _proc_status()["VmHWM"]
        elif self.measure == SAMPLED and self._sampler is not None:
            out["peak_bytes"] = self._sampler.stop()
            self._sampler = None
        else:
            raise RuntimeError("read before reset: GET /sspir_bench/reset first")
        return out


def register(routes) -> Peaks:
    """Add the two routes to an aiohttp RouteTableDef (ComfyUI's ``PromptServer.instance.routes``)."""
    from aiohttp import web

    peaks = Peaks()

    @routes.get("/sspir_bench/reset")
    async def reset(request):
        return web.json_response(peaks.reset())

    @routes.get("/sspir_bench/peak")
    async def peak(request):
        try:
            return web.json_response(peaks.read())
        except RuntimeError as err:
            return web.json_response({"error": str(err)}, status=409)

    return peaks


NODE_CLASS_MAPPINGS: dict = {}  # routes only; ComfyUI skips (with a warning) a custom node folder without this

_server = sys.modules.get("server")  # ComfyUI's server.py, imported before custom nodes load
if getattr(getattr(_server, "PromptServer", None), "instance", None) is not None:
    register(_server.PromptServer.instance.routes)
