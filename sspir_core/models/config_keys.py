"""Config filtering: official configs carry extra keys (`use_srresnet`, `_name_or_path`...) diffusers would warn on."""

from __future__ import annotations

import inspect
from typing import Any


def init_kwargs(cls: type, config: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``config`` that ``cls.__init__`` accepts; private and unknown keys are dropped."""
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    return {k: v for k, v in config.items() if k in accepted}
