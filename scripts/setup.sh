#!/usr/bin/env bash
# Fresh-machine set-up: .venv with torch, this package (editable) and the test tools.
# SSPIR_TORCH picks the torch build ("" = keep whatever torch the venv already has).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
torch_spec=${SSPIR_TORCH-"torch==2.14.1 torchvision==0.29.1"}
# shellcheck disable=SC2086
[ -z "$torch_spec" ] || .venv/bin/python -m pip install -q $torch_spec
.venv/bin/python -m pip install -q -e ".[test]"
