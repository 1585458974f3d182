"""ComfyUI entry point of the SSP-IR node pack (V3 API).

Cheap to import: no model loading, no network, and nothing depends on this folder's name.
Outside ComfyUI (plain ``python -c "import ..."``, pytest) it imports cleanly too: the ComfyUI
API is only touched when ComfyUI calls :func:`comfy_entrypoint`.
"""

from __future__ import annotations

import os
import sys

_PACK_DIR = os.path.dirname(os.path.abspath(__file__))
# Make `import sspir_core` work from this folder whatever it is called. Appended, not prepended,
# so this pack can never shadow ComfyUI's own top-level modules (ComfyUI has a `nodes` module).
if _PACK_DIR not in sys.path:
    sys.path.append(_PACK_DIR)


async def comfy_entrypoint():
    """Called by ComfyUI (>= 0.3.75): returns the extension that lists this pack's nodes."""
    from .nodes import node_list
    from .nodes.api import ComfyExtension  # the host's V3 API module, chosen by probing

    class SSPIRExtension(ComfyExtension):
        async def get_node_list(self) -> list:
            return node_list()

    return SSPIRExtension()
