#!/usr/bin/env bash
# The declared floors of the light dependencies (pyproject.toml) really work: install exactly those versions
# in a separate venv (torch and torchvision linked from .venv, see scripts/min_deps.py) and run the fast tests.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
main=.venv/bin/python
venv=${SSPIR_MINDEPS_VENV:-.venv-mindeps}
rm -rf "$venv"
"$main" -m venv "$venv"
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$main" scripts/min_deps.py seed-torch "$site" > "$venv/constraints.txt"
floors=$("$main" scripts/min_deps.py floors)
echo "min-deps: $floors (torch: $(grep '^torch==' "$venv/constraints.txt"))"
# shellcheck disable=SC2086
"$venv/bin/python" -m pip install -q -c "$venv/constraints.txt" $floors pillow numpy tqdm pytest
"$venv/bin/python" -m pip list 2>/dev/null | grep -iE '^(diffusers|transformers|accelerate|open.clip.torch|safetensors) '
# Fast tests that exercise each light dependency: tokenizer and prompt layout (transformers), the official
# parity fixture and checkpoint I/O (diffusers, safetensors), base-model and CLIP loaders (open_clip,
# accelerate), and a short restore with every scheduler (diffusers). About 3 minutes on 2 cores.
"$venv/bin/python" -m pytest -q -x -p no:cacheprovider tests/test_prompt.py tests/test_parity.py \
    tests/test_checkpoint.py tests/test_base_models.py tests/test_pipeline.py \
    -k "not test_pipeline or determinism or every_scheduler_runs or process_wide"
