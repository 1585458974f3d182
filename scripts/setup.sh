#!/usr/bin/env bash
# Fresh-machine set-up: .venv with torch, this package (editable) and the test tools.
# SSPIR_TORCH picks the torch build ("" = keep whatever torch the venv already has).
# --comfyui also fetches the pinned ComfyUI into a cache and adds its requirements to .venv
# (new packages only; nothing already installed changes), for scripts/run_workflow.py and tests/comfyui.
set -euo pipefail
with_comfyui=0
for arg in "$@"; do
    case $arg in
        --comfyui) with_comfyui=1 ;;
        *) echo "setup.sh: unknown option $arg (known: --comfyui)" >&2; exit 2 ;;
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
[ "$with_comfyui" = 0 ] || .venv/bin/python scripts/comfyui.py fetch
