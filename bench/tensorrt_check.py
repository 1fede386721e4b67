"""TensorRT check, for a machine with an NVIDIA GPU (scripts/gpu-check.sh installs what it needs and runs it).

    artifact's onnx/model.int8.onnx -> a strongly typed TensorRT engine (explicit INT8 from the Q/DQ; one optimisation
    profile: batch 1..64, sequence 1..max_seq_len) -> the artifact's own test split through TensorRT and ONNX Runtime
    -> argmax agreement, max |logit diff|, accuracy of each, TensorRT items/s at batch 32

Prints one JSON object; exit 1 when agreement < 99 % or TensorRT's accuracy is more than 0.5 pt below ONNX
Runtime's. Not run on the development machines (no GPU): ready, untested.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from ernie_cls.runtime import LoadedModel, load_tokenizer
from release.verify import VerifyConfig, labelled_data


def build_engine(onnx_path: str, max_batch: int, max_seq: int):
    from polygraphy.backend.trt import CreateConfig, EngineFromNetwork, NetworkFromOnnxPath, Profile

    profile = Profile()
    for name in ("input_ids", "token_type_ids"):
        profile.add(name, min=(1, 1), opt=(max_batch // 2, min(64, max_seq)), max=(max_batch, max_seq))
    return EngineFromNetwork(
        NetworkFromOnnxPath(onnx_path, strongly_typed=True), config=CreateConfig(profiles=[profile])
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument(
        "--data", required=True, help="the labelled file the artifact was trained on (or a held-out one)"
    )
    parser.add_argument("--text-col")
    parser.add_argument("--label-col")
    args = parser.parse_args(argv)
    from polygraphy.backend.trt import TrtRunner

    model = LoadedModel.open(args.artifact, "onnx-int8", threads=0)
    tokenizer = load_tokenizer(model.artifact)
    data = labelled_data(VerifyConfig(args.artifact, data=args.data, text_col=args.text_col, label_col=args.label_col),
                         model.artifact)  # fmt: skip
    assert data is not None
    ids = tokenizer.encode_ids(data["texts"])
    batches = [tokenizer.pad(ids[i : i + 32]) for i in range(0, len(ids), 32)]
    onnx_path = str(model.artifact.path_of("onnx-int8"))
    ort_logits = np.concatenate([model.backends[0].infer(a, b) for a, b in batches])
    with TrtRunner(build_engine(onnx_path, 64, tokenizer.max_seq_len)) as runner:
        run = [runner.infer({"input_ids": a, "token_type_ids": b})["logits"].copy() for a, b in batches]
        started = time.perf_counter()
        for a, b in batches:
            runner.infer({"input_ids": a, "token_type_ids": b})
        trt_seconds = time.perf_counter() - started
    trt_logits = np.concatenate(run)
    labels = data["labels"]
    report = {
        "n": len(labels),
        "argmax_agreement": float((trt_logits.argmax(-1) == ort_logits.argmax(-1)).mean()),
        "max_abs_logit_diff": float(np.abs(trt_logits - ort_logits).max()),
        "accuracy_tensorrt": float((trt_logits.argmax(-1) == labels).mean()),
        "accuracy_onnxruntime": float((ort_logits.argmax(-1) == labels).mean()),
        "tensorrt_items_per_second_batch32": round(len(labels) / trt_seconds, 1),
    }
    print(json.dumps(report, indent=2))
    drop = report["accuracy_onnxruntime"] - report["accuracy_tensorrt"]
    return 0 if report["argmax_agreement"] >= 0.99 and drop <= 0.005 else 1


if __name__ == "__main__":
    sys.exit(main())
