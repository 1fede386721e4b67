"""Where a scratch:nano training step's time goes, by batch shape: forward+backward, the optimizer, weight averaging.

    python -m bench.step_cost [--reps 6] [--output docs/bench/step-cost.json]

Decides whether a batch *token* budget (bigger batches of short texts, smaller of long ones) would speed training
up: it would only if the per-step part (optimizer, averaging, Python) were a large share of a step, or if tokens/s
grew much with the batch. Random token ids (the cost does not depend on which), the CPU settings `ernie-cls train`
uses (training/paddle_env.py), two untimed warm-up steps per shape, the median of `--reps` timed ones.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from training import paddle_env

SHAPES = [(32, 16), (32, 32), (32, 64), (32, 128), (32, 256), (64, 16), (128, 16), (64, 32), (16, 128), (8, 256)]


def measure(reps: int) -> list[dict]:
    paddle_env.configure()
    import paddle
    from paddle.nn.functional import cross_entropy

    from training.data import load_examples
    from training.modeling import build_model, parse_base_model
    from training.weight_average import WeightAverage

    corpus = [e.text for e in load_examples("data/waimai_10k.csv", "review", "label")[0]]  # a real-sized vocabulary
    model, _ = build_model(parse_base_model("scratch:nano"), 4, corpus, 256)
    optimizer = paddle.optimizer.AdamW(
        learning_rate=1e-4, parameters=model.parameters(), grad_clip=paddle.nn.ClipGradByGlobalNorm(1.0)
    )
    average = WeightAverage(model, 0.99)
    model.train()
    rng = np.random.default_rng(0)
    rows = []
    for batch, length in SHAPES:
        parts: dict[str, list[float]] = {"forward_backward": [], "optimizer": [], "averaging": []}
        for rep in range(reps + 2):
            ids = paddle.to_tensor(rng.integers(5, model.config.vocab_size, (batch, length)))
            labels = paddle.to_tensor(rng.integers(0, 4, (batch,)))
            t0 = time.perf_counter()
            loss = cross_entropy(model(ids, token_type_ids=paddle.zeros_like(ids)), labels)
            loss.backward()
            float(loss)
            t1 = time.perf_counter()
            optimizer.step()
            optimizer.clear_grad()
            t2 = time.perf_counter()
            average.update()
            t3 = time.perf_counter()
            if rep >= 2:
                for key, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                    parts[key].append(seconds)
        ms = {key: float(np.median(v)) * 1000 for key, v in parts.items()}
        step_s = sum(ms.values()) / 1000
        rows.append(
            {"batch": batch, "tokens_per_text": length, **{f"{k}_ms": round(v, 1) for k, v in ms.items()}}
            | {"samples_per_s": round(batch / step_s, 1), "tokens_per_s": round(batch * length / step_s)}
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=6)
    parser.add_argument("--output", default="docs/bench/step-cost.json")
    args = parser.parse_args()
    rows = measure(args.reps)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
