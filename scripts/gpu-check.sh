#!/usr/bin/env bash
# The GPU paths the development machines cannot run (no GPU there), for a machine with NVIDIA GPUs (CUDA 12 driver):
#   1 train     a tiny model on one GPU with AMP                       (ernie-cls train --device gpu --amp)
#   2 train-dp  the same on every GPU with paddle.distributed.launch  (skipped with one GPU)
#   3 export    QAT + export: the INT8 Q/DQ file
#   4 cuda      that file through ONNX Runtime's CUDA provider vs its CPU provider: argmax agreement
#   5 tensorrt  a TensorRT engine from an artifact vs ONNX Runtime on its test split (bench/tensorrt_check.py)
# Prints PASS/FAIL per step, exits 1 if one failed. Installs into .venv-gpu: paddlepaddle-gpu from Paddle's index
# (PADDLE_GPU_INDEX, default CUDA 12.6), ernie-cls, onnxruntime-gpu, TensorRT, polygraphy.
#   scripts/gpu-check.sh [artifact (exported/waimai-sentiment)] [labelled data (data/waimai_10k.csv)]
# Untested here: the development machines have no GPU.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ARTIFACT="${1:-$ROOT/exported/waimai-sentiment}"
DATA="${2:-$ROOT/data/waimai_10k.csv}"
VENV="$ROOT/.venv-gpu"
WORK="$(mktemp -d)"
PADDLE_GPU_INDEX="${PADDLE_GPU_INDEX:-https://www.paddlepaddle.org.cn/packages/stable/cu126/}"
if ! nvidia-smi >/dev/null 2>&1; then
  echo "error: no working nvidia-smi: this check needs an NVIDIA GPU and its driver." >&2
  echo "hint: run it on a GPU machine; the CPU side of the same paths runs in make test." >&2
  exit 2
fi
set -e
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet)
"${PIP[@]}" "paddlepaddle-gpu==3.3.1" --index-url "$PADDLE_GPU_INDEX" --extra-index-url https://pypi.org/simple
"${PIP[@]}" -c "$ROOT/constraints.txt" -e "${ROOT}[train-core,serve]"
"$VENV/bin/python" -m pip uninstall --quiet -y onnxruntime  # onnxruntime-gpu owns the same module
"${PIP[@]}" "onnxruntime-gpu>=1.20" "tensorrt-cu12>=10.4" "polygraphy>=0.49"
set +e
CLI="$VENV/bin/ernie-cls"
TINY=(--data "$DATA" --text-col review --label-col label --base-model scratch:pico --max-steps 60 --time-budget 0 --overwrite
      --no-progress --device gpu)
FAILED=0
step() {  # step <name> <command...>: run it, print PASS/FAIL with the time it took
  local name="$1" started=$SECONDS; shift
  if "$@" >"$WORK/$name.log" 2>&1; then echo "PASS  $name ($((SECONDS - started)) s)"
  else echo "FAIL  $name ($((SECONDS - started)) s): tail of $WORK/$name.log"; tail -5 "$WORK/$name.log"; FAILED=1; fi
}
cd "$ROOT"
step train "$CLI" train "${TINY[@]}" --amp --output "$WORK/one"
GPUS="$(nvidia-smi -L | wc -l)"
if [ "$GPUS" -gt 1 ]; then
  step train-dp "$VENV/bin/python" -m paddle.distributed.launch --gpus "$(seq -s, 0 $((GPUS - 1)))" \
    "$CLI" train "${TINY[@]}" --amp --output "$WORK/dp"
else echo "SKIP  train-dp (one GPU)"; fi
step export bash -c "'$CLI' qat --checkpoint '$WORK/one/best' --output '$WORK/qat' --max-steps 20 --no-progress \
  && '$CLI' export --checkpoint '$WORK/one/best' --qat '$WORK/qat/best' --output '$WORK/artifact' \
     --max-int8-accuracy-drop 1"
step cuda "$VENV/bin/python" - "$WORK/artifact" <<'PY'
import sys
import numpy as np
import onnxruntime as ort
from ernie_cls.runtime import load_tokenizer
from ernie_cls.artifact import verify_artifact
artifact = verify_artifact(sys.argv[1])
ids, types = load_tokenizer(artifact)(["送餐很快，味道很好", "等了两个小时，差评"] * 32)
path = str(artifact.root / artifact.manifest["formats"]["onnx-int8"]["path"])
feed = {"input_ids": ids, "token_type_ids": types}
cuda = ort.InferenceSession(path, providers=["CUDAExecutionProvider"])
assert cuda.get_providers()[0] == "CUDAExecutionProvider", cuda.get_providers()
gpu, cpu = (s.run(None, feed)[0] for s in (cuda, ort.InferenceSession(path, providers=["CPUExecutionProvider"])))
print("argmax agreement", float((gpu.argmax(-1) == cpu.argmax(-1)).mean()), "max |diff|", float(np.abs(gpu - cpu).max()))
assert (gpu.argmax(-1) == cpu.argmax(-1)).mean() >= 0.99
PY
step tensorrt "$VENV/bin/python" -m bench.tensorrt_check "$ARTIFACT" --data "$DATA" --text-col review --label-col label
cat "$WORK/tensorrt.log" 2>/dev/null | tail -8
exit "$FAILED"
