#!/usr/bin/env bash
# Encoder backends on a CUDA machine: parity vs torch float32 and throughput for torch cuda
# float32/float16/bfloat16, ONNX Runtime CUDA (if installed) and TensorRT (if installed; builds
# the engine and checks the second build is a cache hit). Prints a short table.
#
#   scripts/gpu_check.sh [--model DIR] [--batch 8] [--clips 16] [--trt-fp32]
#
# Results go to $OUT/gpu_check.json when $OUT is set (device runners), else
# bench/results/gpu_check.json. Bounded by GPU_CHECK_TIMEOUT seconds (default 540); at the limit
# it prints the table of what it measured.
set -euo pipefail
cd "$(dirname "$0")/.."
out_dir="${OUT:-bench/results}"
mkdir -p "$out_dir"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
python - <<'PY' || true
import importlib.util as u
for m in ("torch", "onnxruntime", "tensorrt", "onnx"):
    print(f"{m}: {'present' if u.find_spec(m) else 'absent'}")
PY
# SIGTERM at the limit makes gpu_check.py stop and print its table; a TensorRT build holds the
# signal until it returns, so SIGKILL follows 20 s later (the JSON is rewritten after every row).
exec timeout -k 20 "${GPU_CHECK_TIMEOUT:-540}" python bench/gpu_check.py --out "$out_dir/gpu_check.json" "$@"
