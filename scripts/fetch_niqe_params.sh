#!/usr/bin/env bash
# Extract NIQE's pristine-image model (niqe_pris_params.npz, 12 KB) from BasicSR's sdist on PyPI, so `sspir eval`
# can compute NIQE offline. Only pip talks to the network (PyPI); nothing is installed.
# Usage: scripts/fetch_niqe_params.sh [DEST_DIR]   (default: $SSPIR_EVAL_WEIGHTS or torch's hub cache)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
dest=${1:-${SSPIR_EVAL_WEIGHTS:-$("$py" -c 'import torch.hub; print(torch.hub.get_dir())')}}
[ -f "$dest/niqe_pris_params.npz" ] && { echo "already there: $dest/niqe_pris_params.npz"; exit 0; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# --no-build-isolation: pip only reads the sdist's metadata, with the torch the venv already has.
"$py" -m pip download -q --no-deps --no-binary :all: --no-build-isolation "basicsr==1.4.2" -d "$tmp"
tar -xzf "$tmp"/basicsr-1.4.2.tar.gz -C "$tmp" basicsr-1.4.2/basicsr/metrics/niqe_pris_params.npz
echo "2a7c182a68c9e7f1b2e2e5ec723279d6f65d912b6fcaf37eb2bf03d7367c4296  $tmp/basicsr-1.4.2/basicsr/metrics/niqe_pris_params.npz" | sha256sum -c --quiet
mkdir -p "$dest"
cp "$tmp"/basicsr-1.4.2/basicsr/metrics/niqe_pris_params.npz "$dest/"
echo "wrote $dest/niqe_pris_params.npz"
