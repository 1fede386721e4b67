"""Training-speed ladder: samples/s of scratch:nano fine-tuning steps under each CPU setting, side by side.

    python -m bench.training_speed [--steps 40] [--output reports/train-speed.json]

Each configuration runs in its own process (thread and MKL variables must be set before Paddle loads), on the
same length-bucketed batches of waimai_10k; the first 5 steps are warm-up and not timed.
  1 out of the box: Paddle defaults (OMP_NUM_THREADS unset -> 1 thread), every batch padded to 128 tokens
  2 + dynamic padding (length-bucketed batches, padded to the batch's longest text)
  3 + all cores (OMP_NUM_THREADS = usable cores)
  4 + MKL AVX2 path on AMD (MKL_DEBUG_CPU_TYPE=5) = what `ernie-cls train` does
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

# (row name, environment variables: None = unset, "auto" = one per usable core, else the value; fixed padding)
CONFIGS: list[tuple[str, dict[str, str | None], bool]] = [
    ("out of the box (1 thread, pad to 128)", {"OMP_NUM_THREADS": None, "MKL_DEBUG_CPU_TYPE": None}, True),
    ("+ dynamic padding", {"OMP_NUM_THREADS": None, "MKL_DEBUG_CPU_TYPE": None}, False),
    ("+ all cores", {"OMP_NUM_THREADS": "auto", "MKL_DEBUG_CPU_TYPE": None}, False),
    ("+ MKL AVX2 on AMD (ernie-cls default)", {"OMP_NUM_THREADS": "auto", "MKL_DEBUG_CPU_TYPE": "5"}, False),
]


def _measure(steps: int, fixed_pad: bool) -> float:
    """Runs in the child process: samples/s over `steps` timed training steps."""
    import random
    import time

    import paddle
    import paddle.nn.functional as F  # noqa: N812

    from training.batching import encode, length_bucketed_batches
    from training.data import LabelMap, load_examples, stratified_split
    from training.modeling import ModelSource, build_model

    examples, _ = load_examples("data/waimai_10k.csv")
    splits = stratified_split(examples, 0.2, 0.1, 42)
    label_map = LabelMap.from_examples(splits.train)
    paddle.seed(0)
    model, tok = build_model(ModelSource("scratch", "nano"), 2, [e.text for e in splits.train], 128)
    data = encode(splits.train, tok, label_map)
    optimizer = paddle.optimizer.AdamW(learning_rate=1e-4, parameters=model.parameters())
    batches = length_bucketed_batches([len(x) for x in data.ids], 32, random.Random(0))[: steps + 5]
    model.train()
    seen, start = 0, 0.0
    for k, batch in enumerate(batches):
        if k == 5:
            start, seen = time.perf_counter(), 0
        ids, tt = tok.pad([data.ids[i] for i in batch], pad_to=128 if fixed_pad else None)
        loss = F.cross_entropy(
            model(paddle.to_tensor(ids), token_type_ids=paddle.to_tensor(tt)), paddle.to_tensor(data.labels[batch])
        )
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        float(loss)
        seen += len(batch)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--output", default="reports/train-speed.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps({"samples_per_second": _measure(args.steps, args.child == "fixed")}))
        return
    from training.paddle_env import cpu_vendor, usable_cores

    rows = []
    for name, env_vars, fixed in CONFIGS:
        env = {k: v for k, v in os.environ.items() if k not in env_vars}
        for key, value in env_vars.items():
            if value is not None:
                env[key] = str(usable_cores()) if value == "auto" else value
        out = (
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.training_speed",
                    "--steps",
                    str(args.steps),
                    "--child",
                    "fixed" if fixed else "dynamic",
                ],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        rows.append({"config": name, **json.loads(out)})
        print(f"{name:45s} {rows[-1]['samples_per_second']:7.1f} samples/s", flush=True)
    report = {
        "model": "scratch:nano",
        "batch_size": 32,
        "steps": args.steps,
        "cpu_vendor": cpu_vendor(),
        "cores": usable_cores(),
        "results": rows,
        "speedup_vs_out_of_the_box": round(rows[-1]["samples_per_second"] / rows[0]["samples_per_second"], 1),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
