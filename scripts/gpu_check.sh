#!/usr/bin/env bash
# The device check on a CUDA machine (bench/gpu_check.py): preflight; the torch encoder at
# released dims (fp16/bf16, batch 8/32/128, parity vs fp32 with TF32 off); the 3B decoder
# (bf16, int8, int4: eager vs static vs CUDA graph, tok/s, % of bandwidth); the encoder backends
# (torch, ONNX Runtime CUDA and TensorRT where installed). Needs torch and this tree only.
#
#   scripts/gpu_check.sh [--sections preflight,encoder,decoder,backends] [--new-tokens 128]
#                        [--model DIR] [--batch 8] [--clips 16] [--trt-fp32]
#   scripts/gpu_check.sh --tiny      # the same logic at tiny dims on a CPU, in seconds
#
# Results go to $OUT/gpu_check.json when $OUT is set (device runners), else
# bench/results/gpu_check.json. Bounded by GPU_CHECK_TIMEOUT seconds (default 470, inside an
# 8-minute slot); at the limit it prints the tables of what it measured.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this tree, installed or not
out_dir="${OUT:-bench/results}"
mkdir -p "$out_dir"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
python - <<'PY' || true
import importlib.util as u
for m in ("torch", "onnxruntime", "tensorrt", "onnx", "torchao", "soundfile"):
    print(f"{m}: {'present' if u.find_spec(m) else 'absent'}")
PY
# SIGTERM at the limit makes gpu_check.py stop and print its table; a TensorRT build holds the
# signal until it returns, so SIGKILL follows 20 s later (the JSON is rewritten after every row).
exec timeout -k 20 "${GPU_CHECK_TIMEOUT:-470}" python bench/gpu_check.py --out "$out_dir/gpu_check.json" "$@"
