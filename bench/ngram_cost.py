"""What the n-gram branch adds to inference (the request hot path): a checkpoint with the branch, exported to FP32
ONNX twice, with and without the branch (the same transformer weights), timed side by side on its dev texts with
ONNX Runtime on one thread, the two models alternated each round (docs/benchmarks.md section 10).

    python -m bench.ngram_cost --checkpoint runs/second-ngram3/best [--rounds 6 --texts 160]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from training import paddle_env


def _padded(rows: list[list[int]], pad: int) -> np.ndarray:
    out = np.full((len(rows), max(map(len, rows))), pad, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a best/ directory whose model has the n-gram branch")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--texts", type=int, default=160)
    args = parser.parse_args()
    paddle_env.configure()
    from release.export import export_onnx, export_paddle_inference, onnx_backend
    from training.checkpoint import recorded_config
    from training.finetune import load_splits
    from training.modeling import load_checkpoint
    from training.ngram_model import without_ngrams

    model, tokenizer, _ = load_checkpoint(args.checkpoint)
    if not hasattr(model, "ngram_table"):
        raise SystemExit(f"{args.checkpoint} has no n-gram branch. Hint: pass a checkpoint `train` attached one to.")
    dev = load_splits(recorded_config(args.checkpoint))[0].dev[: args.texts]
    ids = tokenizer.encode_ids([e.text for e in dev], normalized=True)
    work = Path(tempfile.mkdtemp(prefix="ngram-cost-"))
    runners = {}
    for name, m in (("branch", model), ("plain", without_ngrams(model))):
        export_paddle_inference(m, work / name)
        export_onnx(work / name, work / f"{name}.onnx")
        runners[name] = onnx_backend(work / f"{name}.onnx", threads=1)
    ms: dict[str, dict[int, list[float]]] = {n: {1: [], 32: []} for n in runners}
    for r in range(args.rounds):
        for name in ("branch", "plain") if r % 2 == 0 else ("plain", "branch"):
            for size in (1, 32):
                start, calls = time.perf_counter(), 0
                for i in range(0, len(ids), size):
                    x = _padded(ids[i : i + size], tokenizer.pad_id)
                    runners[name].infer(x, np.zeros_like(x))
                    calls += 1
                ms[name][size].append((time.perf_counter() - start) / calls * 1000)
    report = {
        f"batch {size}": {
            "branch_ms": round(float(np.median(ms["branch"][size])), 2),
            "plain_ms": round(float(np.median(ms["plain"][size])), 2),
            "ratio": round(float(np.median(ms["branch"][size]) / np.median(ms["plain"][size])), 3),
        }
        for size in (1, 32)
    }
    report["onnx_mb"] = {n: round((work / f"{n}.onnx").stat().st_size / 1e6, 1) for n in runners}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
