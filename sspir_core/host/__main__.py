"""``python -m sspir_core.host fetch|path|browser [--version V]``: prepare a ComfyUI for the pack's tests."""

from __future__ import annotations

import argparse
import sys

from .install import (
    DEFAULT_VERSION,
    TARBALL_VERSION,
    VERSIONS,
    ComfyUIError,
    ComfyUIUnavailable,
    chromium_binary,
    comfyui_dir,
    install_playwright_core,
    prepare,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sspir_core.host", description="Fetch, install and locate a real ComfyUI for this pack."
    )
    parser.add_argument(
        "action",
        choices=("fetch", "path", "browser"),
        help="fetch: fetch + install requirements (0.33.0: its own venv); path: print the folder; "
        "browser: install playwright-core",
    )
    parser.add_argument(
        "--version",
        choices=(*VERSIONS, "all"),
        default=None,
        help=f"which ComfyUI (default: COMFYUI_DIR if set, else {DEFAULT_VERSION}); 'all' prepares every tested "
        f"version, skipping {TARBALL_VERSION} when its tarball is absent",
    )
    args = parser.parse_args(argv)
    versions = VERSIONS if args.version == "all" else (args.version,)
    if args.action == "path":
        for version in versions:
            print(comfyui_dir(version))
        return 0
    try:
        if args.action == "browser":
            print(install_playwright_core())
            if chromium_binary() is None:
                print("note: no Chromium found (Debian: apt install chromium)", file=sys.stderr)
            return 0
        for version in versions:
            try:
                print(prepare(version).folder)
            except ComfyUIUnavailable as err:
                if args.version != "all":  # named on its own (as .ci/run does): a missing tarball is an error
                    raise
                print(f"note: ComfyUI {version} skipped: {err}", file=sys.stderr)
    except ComfyUIError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
