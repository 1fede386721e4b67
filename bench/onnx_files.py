"""Several ONNX files of one architecture, side by side in ONNX Runtime: milliseconds per batch, interleaved.

    python -m bench.onnx_files fp32=runs/waimai-full/onnx/model.fp32.onnx int8=runs/waimai-full/onnx/model.int8.onnx \
        [--threads 1,2] [--shapes 1x32,1x128,32x32,32x128] [--rounds 5] [--output reports/onnx-files.json]

For each thread count and (batch x sequence) shape, the files take turns (round 1: a, b, c; round 2: a, b, c; ...),
so drift of the machine hits all alike; the median of the rounds is reported with each file's speed-up over the
first one. Token ids are random in [5, 1000): speed does not depend on the values. Used for the INT8 decisions of
docs/quantization.md (which INT8 form, float or INT8 embedding tables).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np


def _session(path: str, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def measure(files: dict[str, str], threads: int, shape: tuple[int, int], rounds: int) -> dict[str, float]:
    """Median milliseconds per run of each file at one shape, the files interleaved round by round."""
    sessions = {name: _session(path, threads) for name, path in files.items()}
    rng = np.random.default_rng(0)
    feed = {"input_ids": rng.integers(5, 1000, shape, dtype=np.int64), "token_type_ids": np.zeros(shape, np.int64)}
    for session in sessions.values():
        session.run(None, feed)
    repeats = max(1, int(2048 / (shape[0] * shape[1])))  # ~the same work per timing at every shape
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, session in sessions.items():
            started = time.perf_counter()
            for _ in range(repeats):
                session.run(None, feed)
            times[name].append((time.perf_counter() - started) / repeats * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="name=path.onnx; the first is the reference")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--shapes", default="1x32,1x128,32x32,32x128")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", default="reports/onnx-files.json")
    args = parser.parse_args(argv)
    files = dict(f.split("=", 1) for f in args.files)
    reference = next(iter(files))
    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        for shape in (tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")):
            ms = measure(files, threads, (shape[0], shape[1]), args.rounds)
            speedup = {n: round(ms[reference] / v, 2) for n, v in ms.items()}
            rows.append({"threads": threads, "batch": shape[0], "sequence": shape[1], "ms": ms, "speedup": speedup})
            cells = "  ".join(f"{n} {v:7.2f} ms x{speedup[n]:.2f}" for n, v in ms.items())
            print(f"{threads} thread(s) {shape[0]:>2} x {shape[1]:<3} {cells}", flush=True)
    sizes = {name: Path(path).stat().st_size for name, path in files.items()}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"files": files, "bytes": sizes, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
