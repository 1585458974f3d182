"""Live progress of a queued ComfyUI prompt on the terminal, from ComfyUI's websocket (``/ws?clientId=``).

ComfyUI tells a client which node runs (``executing``) and how far a node's progress bar is (``progress``, or
``progress_state`` alone when a node reports through the V3 API's ``set_progress``:
steps, or the pack's units of work: tiles of every stage); the pack's own log lines go to comfyui.log, which a
newcomer never sees. :class:`ProgressView` turns those events into text (a pure class, tested without a
server); :class:`ProgressWatcher` reads the websocket in a thread with aiohttp, which ComfyUI itself requires
(so it is installed wherever ComfyUI runs from this venv); without it the run goes on without live progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min"


class ProgressView:
    """Text for ComfyUI's progress events of one prompt.

    On a terminal (``tty``) one line is rewritten in place; otherwise (a log, a pipe, CI) plain lines are
    written: one when a node starts and one per tenth of its progress, so a 50-step run writes a few lines.
    """

    def __init__(
        self, names: dict[str, str], out: TextIO, tty: bool, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.names = names  # node id -> what to call it (display name, or class type)
        self.out = out
        self.tty = tty
        self.clock = clock
        self.prompt_id: str | None = None
        self.node: str | None = None
        self.nodes_done = 0
        self._first: tuple[float, int] | None = None  # (time, value) of the node's first progress event
        self._last_tenth = -1
        self._width = 0

    def _name(self, node: str | None) -> str:
        return self.names.get(str(node), f"node {node}")

    def _emit(self, text: str, final: bool = False) -> None:
        if self.tty:
            cols = shutil.get_terminal_size((100, 20)).columns - 1
            text = text[:cols]
            pad = max(0, self._width - len(text))
            self.out.write("\r" + text + " " * pad + ("\n" if final else ""))
            self._width = 0 if final else len(text)
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def event(self, message: dict) -> None:
        """One websocket message (``{"type": ..., "data": {...}}``); other prompts' are ignored."""
        kind, data = message.get("type"), message.get("data") or {}
        if kind == "execution_start" and self.prompt_id is None:  # the first prompt started is the one shown
            self.prompt_id = data.get("prompt_id")
        if self.prompt_id is not None and data.get("prompt_id") not in (None, self.prompt_id):
            return
        if kind == "execution_cached":
            self.nodes_done += len(data.get("nodes") or [])
        elif kind == "executing":
            node = data.get("node")
            if node is None:  # the prompt is done
                self.finish()
                return
            if self.node is not None:
                self.nodes_done += 1
            self.node, self._first, self._last_tenth = str(node), None, -1
            self._emit(f"[{self.nodes_done + 1}/{len(self.names)}] {self._name(node)}")
        elif kind == "progress":
            self._progress(str(data.get("node", self.node)), int(data.get("value", 0)), int(data.get("max", 0)))
        elif kind == "progress_state":  # the V3 API's set_progress sends only this (no "progress" message)
            running = {
                str(n): state
                for n, state in (data.get("nodes") or {}).items()
                if state.get("state") == "running" and float(state.get("max", 0)) > 1
            }
            node = self.node if self.node in running else next(iter(running), None)
            if node is not None:
                self._progress(node, int(running[node].get("value", 0)), int(running[node].get("max", 0)))
        elif kind == "execution_error":
            self.finish()

    def _progress(self, node: str, value: int, total: int) -> None:
        now = self.clock()
        if self._first is None or node != self.node:
            self.node, self._first = node, (now, value)
        text = f"[{self.nodes_done + 1}/{len(self.names)}] {self._name(node)}: {value}/{total}"
        t0, v0 = self._first
        if value > v0 and total > value:
            text += f", about {_duration((now - t0) / (value - v0) * (total - value))} left"
        tenth = 10 * value // max(total, 1)
        if self.tty or tenth > self._last_tenth:
            self._last_tenth = tenth
            self._emit(text)

    def finish(self) -> None:
        """End the updating line so later output starts on a fresh one."""
        if self.tty and self._width:
            self.out.write("\n")
            self.out.flush()
            self._width = 0


class ProgressWatcher:
    """Reads ``ws://host/ws?clientId=`` in a background thread and feeds a :class:`ProgressView`."""

    def __init__(self, url: str, client_id: str, view: ProgressView) -> None:
        self.ws_url = url.replace("http://", "ws://", 1) + f"/ws?clientId={client_id}"
        self.view = view
        self.connected = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, daemon=True, name="comfyui-progress")
        self.error: str | None = None

    def start(self, timeout: float = 10.0) -> bool:
        """Connect before the prompt is queued (so no event is missed); False when there is no live progress."""
        try:
            import aiohttp  # noqa: F401 (ComfyUI's own requirement)
        except ImportError:
            self.error = "aiohttp is not installed"
            return False
        self._thread.start()
        return self.connected.wait(timeout) and self.error is None

    def _main(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._read())
        except Exception as err:  # noqa: BLE001 (progress is a convenience: never fail the run for it)
            self.error = f"{type(err).__name__}: {err}"
        finally:
            self.connected.set()
            self._loop.close()

    async def _read(self) -> None:
        import aiohttp

        self._stop = asyncio.Event()
        async with aiohttp.ClientSession() as session, session.ws_connect(self.ws_url, heartbeat=30) as ws:
            self.connected.set()
            stop = asyncio.ensure_future(self._stop.wait())
            while not self._stop.is_set():
                receive = asyncio.ensure_future(ws.receive())
                done, _ = await asyncio.wait({receive, stop}, return_when=asyncio.FIRST_COMPLETED)
                if receive not in done:
                    receive.cancel()
                    break
                msg = receive.result()
                if msg.type == aiohttp.WSMsgType.TEXT:
                    with contextlib.suppress(ValueError):
                        self.view.event(json.loads(msg.data))
                elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    break
                # binary frames are latent previews: not shown on a terminal
            stop.cancel()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread.is_alive():
            self._thread.join(5)
        self.view.finish()


def node_names(prompt: dict, display_names: dict[str, str]) -> dict[str, str]:
    """Node id -> a name for the terminal: the node's title when the workflow set one, else its display name."""
    names = {}
    for node_id, node in prompt.items():
        class_type = node.get("class_type", "")
        title = (node.get("_meta") or {}).get("title")
        names[str(node_id)] = title if title and title != class_type else display_names.get(class_type, class_type)
    return names


def is_tty(stream: TextIO = sys.stderr) -> bool:
    return bool(getattr(stream, "isatty", None) and stream.isatty())
