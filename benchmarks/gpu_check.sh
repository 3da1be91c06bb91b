#!/usr/bin/env bash
# The GPU check of the update rules: one H100 (or any one CUDA GPU), torch + transformers only.
#
#   bash benchmarks/gpu_check.sh            # Qwen2.5-1.5B shape, bf16, 8k and 32k tokens per update
#   BATCH=8,32,64 REPEATS=3 bash benchmarks/gpu_check.sh
#   DEVICE=cpu SIZE=tiny bash benchmarks/gpu_check.sh   # the same script on CPU (what the tests run)
#
# Prints one table: seconds per update x GRPO for each rule, peak memory, extra parameter copies,
# host syncs per update, and GXPO's bf16 / fp16 ratio statistics against fp32. Bounded by
# LIMIT seconds (default 480: it must finish in 8 minutes); the first run compiles GXPO's kernels.
# Each batch size's rows are printed when it is measured: a run cut off at LIMIT keeps them.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
PY="${PYTHON:-python3}"
SIZE="${SIZE:-1.5b}"
DEVICE="${DEVICE:-cuda}"
BATCH="${BATCH:-8,32}"
REPEATS="${REPEATS:-3}"
LIMIT="${LIMIT:-480}"
"$PY" -c "import torch, transformers" || { echo "gpu_check: needs torch and transformers (pip install torch transformers)" >&2; exit 2; }
if [ "$DEVICE" = cuda ]; then
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "gpu_check: no CUDA device visible (DEVICE=cpu SIZE=tiny runs the CPU mode)" >&2; exit 2; }
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec timeout --signal=TERM "$LIMIT" "$PY" "$HERE/bench_gpu.py" --size "$SIZE" --device "$DEVICE" \
  --batch "$BATCH" --repeats "$REPEATS" "$@"
