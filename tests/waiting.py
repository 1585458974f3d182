"""Waiting in tests without timing assertions: a test asserts an event, an order or a count, and a deadline
here only turns a hang into a failure. It is never what the test checks, so it is generous: a loaded CI
machine must never reach it, while a hang (the bug the test is for) reaches it and fails with a message."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

HANG_GUARD_S = 120.0  # far above any passing run on a shared 2-core machine; only a hang reaches it


def call_in_thread(fn: Callable[[], T], what: str, guard: float = HANG_GUARD_S) -> T:
    """``fn()`` in a daemon thread: its result, or its exception raised here; the test fails when it has not
    returned after ``guard`` s (``what`` hung) instead of blocking the suite."""
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:  # handed to the test's thread
            result["error"] = exc

    thread = threading.Thread(target=work, name=f"test: {what}", daemon=True)
    thread.start()
    thread.join(guard)
    if thread.is_alive():
        pytest.fail(f"{what} did not return within the {guard:g} s hang guard")
    if "error" in result:
        raise result["error"]
    return result["value"]


def wait_until(condition: Callable[[], Any], what: str, guard: float = HANG_GUARD_S, poll: float = 0.1) -> Any:
    """Poll ``condition`` until it returns something true, and return that; fail naming ``what`` after ``guard``
    s. For state another process owns (a server's log): ``poll`` is how often to look, not a timing assumption."""
    deadline = time.monotonic() + guard
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not seen within the {guard:g} s hang guard")
        time.sleep(poll)
    return value
