"""Thin ComfyUI node classes (V3 API), one concept per module; all work happens in ``sspir_core``."""

from __future__ import annotations


def node_list() -> list:
    """The node classes this pack registers. Imported only inside ComfyUI (they import ``comfy_api``)."""
    return []
