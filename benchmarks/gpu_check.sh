#!/usr/bin/env bash
# The prepared GPU check, one command for the device tool (the repository root is the working directory there;
# $OUT comes back). Under 8 minutes on one H100/H200; writes $OUT/gpu_check.json and $OUT/gpu_check.log.
#   run: bash benchmarks/gpu_check.sh
set -euo pipefail
export PYTHONPATH=. TOKENIZERS_PARALLELISM=false
OUT=${OUT:-runs/gpu-check}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.csv" 2>&1 || true
timeout 500 python3 benchmarks/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
