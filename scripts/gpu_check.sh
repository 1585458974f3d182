#!/usr/bin/env bash
# GPU figures in one command: SD1.5-size random weights, nothing downloaded.
#   Issue 18 first: the native route against PGA Sampler in real ComfyUI servers (512 -> 2048 px, fp16, full SD1.5
#   checkpoint and SSP-IR patch written with random weights outside OUT, in SSPIR_NATIVE_MODELS), VRAM peak and s/image.
#   Issue 11: fp16 and bf16, eager and torch.compile: ms/step (vs stock diffusers), FLOPs and achieved TFLOP/s,
#   seconds per 512 px image (128 px input x4, 50 steps, CFG 7.5), and tiled peak memory up to 4096 px.
#   SSPIR_GPU_ONLY=native runs the native comparison alone.
# Usage (repo root, CUDA torch installed):  bash scripts/gpu_check.sh [OUT_DIR]
# Budget: about 5 minutes on an H100/H200; every run has a timeout and the whole script stops by
# SSPIR_GPU_BUDGET seconds (default 540), so it always ends in time and keeps what finished.
set -u
OUT=${1:-${OUT:-gpu-check}}
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
BUDGET=${SSPIR_GPU_BUDGET:-540}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || true
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} | tee "$OUT/card.txt"

run() {  # run NAME LIMIT_S ARGS...: one bench run, bounded by its limit and by what is left of the budget
  local name=$1 limit=$2; shift 2
  local left=$(( BUDGET - SECONDS ))
  if (( left < 30 )); then echo "$name: skipped (budget spent)" | tee -a "$OUT/summary.txt"; return; fi
  (( limit > left )) && limit=$left
  timeout "$limit" "$PY" -m sspir_core.cli bench --config sd15 --device cuda --json "$OUT/$name.json" "$@" \
    > "$OUT/$name.txt" 2>&1
  local rc=$?
  echo "$name (rc $rc, ${limit}s limit): $(tail -n 1 "$OUT/$name.txt")" | tee -a "$OUT/summary.txt"
}

# Needs ComfyUI (bash scripts/setup.sh --comfyui). 20 steps keep both routes' two images each (warm-up + timed)
# inside the limit; s/image scales with the steps.
NM=${SSPIR_NATIVE_MODELS:-/tmp/sspir-native-full}
if timeout 180 "$PY" -m sspir_core.cli demo-models "$NM" --no-captioner --native-full-size > "$OUT/native-models.txt" 2>&1; then
    run native-2048 300 --parts native --native-size 2048 --native-steps 20 --repeats 1 \
        --native-checkpoint "$NM/checkpoints/sspir-native-random-sd15-full.safetensors" \
        --native-sspir "$NM/sspir/sspir-native-random-sd15-full.safetensors" \
        --native-clip-vision "$NM/clip_vision/sspir-native-random-clip-vit-l.safetensors"
else
    echo "native-2048: could not write the full-size native models (see native-models.txt)" | tee -a "$OUT/summary.txt"
fi
[ "${SSPIR_GPU_ONLY:-}" = native ] && { echo "all output in $OUT/; ${SECONDS}s"; exit 0; }

STEP=(--parts step,flops,image --size 512 --steps 50 --step-steps 4 --repeats 5)
run fp16-eager 100 --dtype fp16 "${STEP[@]}"
run bf16-eager 100 --dtype bf16 "${STEP[@]}"
run fp16-compiled 170 --dtype fp16 --compile "${STEP[@]}"
run bf16-compiled 170 --dtype bf16 --compile "${STEP[@]}"
run fp16-memory 120 --dtype fp16 --parts memory --sizes 1024,2048,4096 --memory-steps 2

# Utilisation against the card's dense fp16/bf16 tensor peak (edit PEAK_TFLOPS for other cards).
"$PY" - "$OUT" <<'PYEOF' | tee -a "$OUT/summary.txt"
import json, os, sys, pathlib
out = pathlib.Path(sys.argv[1])
card = (out / "card.txt").read_text()
peak = float(os.environ.get("PEAK_TFLOPS", "0")) or next(
    (v for k, v in (("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0),
                    ("4090", 165.0)) if k in card), 0.0)
for f in sorted(out.glob("*.json")):
    r = json.loads(f.read_text())
    line = f"{f.stem}: {r.get('summary', '')}"
    if peak and "flops" in r and "step" in r:
        tflops = r["flops"]["step_flops"] / (r["step"]["ours_ms"] / 1000) / 1e12
        line += f"; step utilisation {100 * tflops / peak:.1f}% of {peak:.0f} TFLOP/s"
        if "image" in r:
            line += f"; image {100 * r['flops']['image_flops'] / r['image']['seconds'] / 1e12 / peak:.1f}%"
    print(line)
print("target: <= 2 s per 512 px image (x4, 50 steps, CFG) on an H100-class card")
PYEOF
echo "all output in $OUT/ (summary.txt, one .txt/.json per run); ${SECONDS}s"
