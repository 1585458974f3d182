"""Fetch, install and locate a real ComfyUI for this pack: the command line of ``sspir_core.host``.

    python scripts/comfyui.py fetch                  # the pinned 0.3.75 (cached) + its requirements, print its folder
    python scripts/comfyui.py fetch --version 0.33.0 # ComfyUI 0.33.0 from its source tarball, in a venv of its own
    python scripts/comfyui.py fetch --version all    # both (0.33.0 skipped, saying why, without its tarball)
    python scripts/comfyui.py path                   # print the folder that would be used
    python scripts/comfyui.py browser                # npm-install playwright-core into the cache (browser test)

Environment: ``COMFYUI_DIR`` (a user's ComfyUI checkout: used as is, nothing installed into it),
``SSPIR_COMFYUI_CACHE`` (cache root, default ``~/.cache/sspir``), ``COMFYUI_PYTHON`` (the Python that runs
the default ComfyUI, default the one running this script), ``SSPIR_COMFYUI_033_TARBALL`` (the 0.33.0 source
tarball, default ``../shared/comfyui/ComfyUI-0.33.0.tar.gz`` beside the checkout).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    # This checkout's sspir_core, whatever is installed (the same rule as the tests' pythonpath).
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from sspir_core.host.__main__ import main

    sys.exit(main())
