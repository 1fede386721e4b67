#!/usr/bin/env bash
# On a machine with an NVIDIA GPU (driver for CUDA 12): build a TensorRT engine from an artifact's INT8 QDQ ONNX and
# compare it with ONNX Runtime on the artifact's test split (bench/tensorrt_check.py). Installs into .venv-gpu.
#   scripts/gpu-check.sh [artifact (exported/waimai-sentiment)] [labelled data (data/waimai_10k.csv)]
# Untested here: the development machines have no GPU.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ARTIFACT="${1:-$ROOT/exported/waimai-sentiment}"
DATA="${2:-$ROOT/data/waimai_10k.csv}"
VENV="$ROOT/.venv-gpu"
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi >/dev/null 2>&1; then
  echo "error: no working nvidia-smi: this check needs an NVIDIA GPU and its driver." >&2
  echo "hint: run it on a GPU machine; the CPU checks of the same file are in make test (tests/test_quantize_onnx.py)." >&2
  exit 2
fi
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet -c "$ROOT/constraints.txt" -e "$ROOT[serve]"
"$VENV/bin/python" -m pip install --quiet "tensorrt-cu12>=10.4" "polygraphy>=0.49"
cd "$ROOT"
exec "$VENV/bin/python" -m bench.tensorrt_check "$ARTIFACT" --data "$DATA" --text-col review --label-col label
