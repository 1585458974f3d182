"""Optional ``torch.compile`` of the denoiser (ControlNet + UNet) with a clean fallback to eager.

``torch.compile`` compiles lazily, at the first call, and can fail there (no C++ compiler, an unsupported
operator, a Triton-less GPU...). :func:`compile_denoiser` therefore wraps each module's ``forward``: the
first failure prints one message naming the cause, switches that module back to eager for good and
re-runs the call eagerly, so a restore never dies because of ``--compile``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn


def _cause(e: BaseException) -> str:
    """The innermost cause's type and first line (dynamo wraps the real error)."""
    while (inner := getattr(e, "inner_exception", None) or e.__cause__) is not None:
        e = inner
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300]}" if text else type(e).__name__


class _GuardedForward:
    """``module.forward`` replacement: the compiled forward until it fails once, then the eager one."""

    def __init__(self, module: nn.Module, name: str, log: Callable[[str], Any], **compile_kwargs: Any):
        self.eager = module.forward
        self.compiled = torch.compile(self.eager, **compile_kwargs)
        self.name, self.log, self.failed = name, log, False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.failed:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - any compiler failure: fall back, say why
                self.failed = True
                self.log(
                    f"--compile: could not compile the {self.name} ({_cause(e)}); "
                    "running it eagerly (same results, no speed-up)"
                )
        return self.eager(*args, **kwargs)


def compile_denoiser(
    pipe: Any,
    mode: str | None = None,
    log: Callable[[str], Any] | None = None,
    backend: str | Callable[..., Any] = "inductor",
) -> list[str]:
    """``torch.compile`` the pipeline's ControlNet and UNet in place; returns the names compiled.

    ``mode``: a ``torch.compile`` mode (None = default; "max-autotune" on a GPU for long runs);
    ``backend``: a ``torch.compile`` backend.
    Refuses nothing: when compiling is impossible the modules run eagerly, with one message.
    """
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    if not hasattr(torch, "compile"):
        log("--compile: this torch has no torch.compile; running eagerly")
        return []
    done = []
    for name, module in (("ControlNet", pipe.models.controlnet), ("UNet", pipe.models.unet)):
        if isinstance(getattr(module, "forward", None), _GuardedForward):
            continue
        module.forward = _GuardedForward(module, name, log, mode=mode, dynamic=False, backend=backend)
        done.append(name)
    return done


def uncompile_denoiser(pipe: Any) -> None:
    """Undo :func:`compile_denoiser` (the eager forwards come back)."""
    for module in (pipe.models.controlnet, pipe.models.unet):
        if isinstance(getattr(module, "forward", None), _GuardedForward):
            del module.forward


def is_compiled(module: nn.Module) -> bool:
    """True while ``module`` runs through :func:`compile_denoiser`'s compiled forward (not fallen back)."""
    forward = module.__dict__.get("forward")
    return isinstance(forward, _GuardedForward) and not forward.failed


@contextlib.contextmanager
def eager_denoiser(pipe: Any) -> Iterator[None]:
    """Inside the block the ControlNet and UNet run their eager forwards (the bench's uncompiled baseline)."""
    saved = [
        (m, m.__dict__.pop("forward"))
        for m in (pipe.models.controlnet, pipe.models.unet)
        if isinstance(m.__dict__.get("forward"), _GuardedForward)
    ]
    try:
        yield
    finally:
        for module, forward in saved:
            module.forward = forward
