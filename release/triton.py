"""The artifact's Triton model repository: text in, label + score + probabilities out.

    triton/
      ernie_cls_text/          ensemble (what clients call): TEXT -> LABEL, SCORE, PROBABILITIES, LOW_CONFIDENCE,
                               TRUNCATED
      ernie_cls_tokenizer/     Python backend: ernie-cls's normaliser + tokenizer, padded to length buckets
      ernie_cls/               ONNX Runtime backend: the INT8 QDQ model; labels.txt for the classification
                               extension; config.pbtxt = CPU, configs/gpu.pbtxt = TensorRT execution accelerator
                               (INT8, engine cache, one optimisation profile over the batch and sequence axes)
      ernie_cls_postprocess/   Python backend: temperature-calibrated softmax, label, low-confidence flag

Start Triton with `--model-repository <artifact>/triton`; on a GPU add `--model-config-name=gpu`, which picks
`ernie_cls/configs/gpu.pbtxt` (Triton's custom model configurations). The Python models need ernie-cls in the
backend's Python (`pip install ernie-cls`; see docs/triton.md).
"""

from __future__ import annotations

import shutil
from pathlib import Path

ENSEMBLE, TOKENIZER, MODEL, POSTPROCESS = "ernie_cls_text", "ernie_cls_tokenizer", "ernie_cls", "ernie_cls_postprocess"
LENGTH_BUCKETS = (16, 32, 64, 128, 256, 512)
MAX_BATCH_SIZE = 64
# Must exist and be writable (ONNX Runtime creates only the last directory); mount a volume on /cache to keep built
# engines across restarts (a build takes minutes). The `triton` image creates it.
TRT_CACHE = "/cache/tensorrt"
# What each model directory must hold (Triton loads nothing less).
REQUIRED = {
    ENSEMBLE: ("config.pbtxt", "1"),
    TOKENIZER: ("config.pbtxt", "1/model.py", "1/tokenizer/vocab.txt"),
    MODEL: ("config.pbtxt", "configs/gpu.pbtxt", "1/model.onnx", "labels.txt"),
    POSTPROCESS: ("config.pbtxt", "1/model.py", "labels.txt"),
}
_SOURCES = Path(__file__).parent / "triton_models"


def _tensor(name: str, dtype: str, dims: str, extra: str = "") -> str:
    return f'  {{ name: "{name}" data_type: {dtype} dims: [ {dims} ]{extra} }}'


def _block(key: str, tensors: list[str]) -> str:
    return f"{key} [\n" + ",\n".join(tensors) + "\n]"


def _parameters(values: dict[str, object]) -> str:
    return "\n".join(f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in values.items())


def _head(name: str, backend: str) -> str:
    return f'name: "{name}"\n{backend}\nmax_batch_size: {MAX_BATCH_SIZE}'


def model_config(num_labels: int, max_seq_len: int, gpu: bool) -> str:
    """The ONNX model: CPU (ONNX Runtime) or GPU (ONNX Runtime's TensorRT execution provider, INT8 from the Q/DQ)."""
    ids = [_tensor(n, "TYPE_INT64", "-1") for n in ("input_ids", "token_type_ids")]
    logits = [_tensor("logits", "TYPE_FP32", str(num_labels), ' label_filename: "labels.txt"')]
    parts = [
        _head(MODEL, 'backend: "onnxruntime"'),
        _block("input", ids),
        _block("output", logits),
        "dynamic_batching { max_queue_delay_microseconds: 2000 }",
        f"instance_group [ {{ kind: {'KIND_GPU' if gpu else 'KIND_CPU'} count: 1 }} ]",
    ]
    if gpu:
        opt, opt_seq = MAX_BATCH_SIZE // 2, min(64, max_seq_len)  # TensorRT needs min <= opt <= max on every axis
        profile = {
            "precision_mode": "INT8",
            "max_workspace_size_bytes": 1 << 30,
            "trt_engine_cache_enable": "true",
            "trt_engine_cache_path": TRT_CACHE,
            "trt_profile_min_shapes": "input_ids:1x1,token_type_ids:1x1",
            "trt_profile_opt_shapes": f"input_ids:{opt}x{opt_seq},token_type_ids:{opt}x{opt_seq}",
            "trt_profile_max_shapes": (
                f"input_ids:{MAX_BATCH_SIZE}x{max_seq_len},token_type_ids:{MAX_BATCH_SIZE}x{max_seq_len}"
            ),
        }
        params = "\n".join(f'      parameters {{ key: "{k}" value: "{v}" }}' for k, v in profile.items())
        parts.append(
            'optimization { execution_accelerators { gpu_execution_accelerator: [ {\n      name: "tensorrt"\n'
            f"{params}\n}} ] }} }}"
        )
    return "\n".join(parts) + "\n"


def tokenizer_config(max_seq_len: int) -> str:
    outputs = [
        _tensor("input_ids", "TYPE_INT64", "-1"),
        _tensor("token_type_ids", "TYPE_INT64", "-1"),
        _tensor("TRUNCATED", "TYPE_BOOL", "1"),
    ]
    buckets = ",".join(str(b) for b in LENGTH_BUCKETS if b < max_seq_len)
    return "\n".join(
        [
            _head(TOKENIZER, 'backend: "python"'),
            _block("input", [_tensor("TEXT", "TYPE_STRING", "1")]),
            _block("output", outputs),
            "dynamic_batching { max_queue_delay_microseconds: 1000 }",
            "instance_group [ { kind: KIND_CPU count: 1 } ]",
            _parameters({"max_seq_len": max_seq_len, "length_buckets": buckets}),
        ]
    )


def postprocess_config(num_labels: int, temperature: float, low_confidence_threshold: float) -> str:
    outputs = [
        _tensor("LABEL", "TYPE_STRING", "1"),
        _tensor("SCORE", "TYPE_FP32", "1"),
        _tensor("PROBABILITIES", "TYPE_FP32", str(num_labels)),
        _tensor("LOW_CONFIDENCE", "TYPE_BOOL", "1"),
    ]
    return "\n".join(
        [
            _head(POSTPROCESS, 'backend: "python"'),
            _block("input", [_tensor("logits", "TYPE_FP32", str(num_labels))]),
            _block("output", outputs),
            "instance_group [ { kind: KIND_CPU count: 1 } ]",
            _parameters({"temperature": temperature, "low_confidence_threshold": low_confidence_threshold}),
        ]
    )


def _step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
    maps = [f'input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items()]
    maps += [f'output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items()]
    return f'    {{\n      model_name: "{model}"\n      model_version: -1\n      ' + "\n      ".join(maps) + "\n    }"


def ensemble_config(num_labels: int) -> str:
    ids = {"input_ids": "input_ids", "token_type_ids": "token_type_ids"}
    outputs = {"LABEL": "LABEL", "SCORE": "SCORE", "PROBABILITIES": "PROBABILITIES", "LOW_CONFIDENCE": "LOW_CONFIDENCE"}
    steps = [
        _step(TOKENIZER, {"TEXT": "TEXT"}, {**ids, "TRUNCATED": "TRUNCATED"}),
        _step(MODEL, ids, {"logits": "logits"}),
        _step(POSTPROCESS, {"logits": "logits"}, outputs),
    ]
    output = [
        _tensor("LABEL", "TYPE_STRING", "1"),
        _tensor("SCORE", "TYPE_FP32", "1"),
        _tensor("PROBABILITIES", "TYPE_FP32", str(num_labels)),
        _tensor("LOW_CONFIDENCE", "TYPE_BOOL", "1"),
        _tensor("TRUNCATED", "TYPE_BOOL", "1"),
    ]
    return "\n".join(
        [
            _head(ENSEMBLE, 'platform: "ensemble"'),
            _block("input", [_tensor("TEXT", "TYPE_STRING", "1")]),
            _block("output", output),
            "ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}",
        ]
    )


def write_triton_repository(
    root: Path,
    onnx_path: Path,
    tokenizer_dir: Path,
    labels: list[str],
    temperature: float,
    max_seq_len: int,
    low_confidence_threshold: float = 0.6,
) -> None:
    """Write the four models under `root` (the artifact's triton/ directory)."""
    for name in (ENSEMBLE, TOKENIZER, MODEL, POSTPROCESS):
        (root / name / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, root / MODEL / "1" / "model.onnx")
    shutil.copytree(tokenizer_dir, root / TOKENIZER / "1" / "tokenizer", dirs_exist_ok=True)
    shutil.copyfile(_SOURCES / "tokenizer.py", root / TOKENIZER / "1" / "model.py")
    shutil.copyfile(_SOURCES / "postprocess.py", root / POSTPROCESS / "1" / "model.py")
    names = "".join(f"{label}\n" for label in labels)
    files = {
        f"{ENSEMBLE}/config.pbtxt": ensemble_config(len(labels)),
        f"{TOKENIZER}/config.pbtxt": tokenizer_config(max_seq_len),
        f"{MODEL}/config.pbtxt": model_config(len(labels), max_seq_len, gpu=False),
        f"{MODEL}/configs/gpu.pbtxt": model_config(len(labels), max_seq_len, gpu=True),
        f"{MODEL}/labels.txt": names,
        f"{POSTPROCESS}/config.pbtxt": postprocess_config(len(labels), temperature, low_confidence_threshold),
        f"{POSTPROCESS}/labels.txt": names,
    }
    # Triton needs the ensemble's version directory; git keeps no empty directory, so it holds a note
    files[f"{ENSEMBLE}/1/README.md"] = "An ensemble has no model file; Triton needs this version directory.\n"
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text, encoding="utf-8")


def repository_problems(root: Path, labels: list[str]) -> list[str]:
    """What is missing or inconsistent in a repository written by `write_triton_repository` (for `verify`)."""
    problems = [
        f"{name}/{rel} is missing"
        for name, needs in REQUIRED.items()
        for rel in needs
        if not (root / name / rel).exists()
    ]
    for name in (MODEL, POSTPROCESS):
        path = root / name / "labels.txt"
        if path.is_file() and path.read_text(encoding="utf-8").splitlines() != labels:
            problems.append(f"{name}/labels.txt does not list the manifest's labels in order")
    ensemble = root / ENSEMBLE / "config.pbtxt"
    if ensemble.is_file():
        text = ensemble.read_text(encoding="utf-8")
        problems += [
            f"{ENSEMBLE} does not run {name}" for name in (TOKENIZER, MODEL, POSTPROCESS) if f'"{name}"' not in text
        ]
    return problems
