"""Training throughput with batches of --batch-size texts against batches of --batch-tokens padded tokens.

    python -m bench.batch_tokens --data runs/data/domain_sentiment.csv --text-col review --label-col label \
        [--settings 0 2048] [--rounds 2] [--output docs/bench/batch-tokens.json]

Each run is one masked-LM epoch and one fine-tuning epoch of `ernie-cls train` (scratch:nano, --max-seq-len 128,
--time-budget 0, no baseline, no n-gram branch) in its own process, the settings alternated A B B A ... so that the
machine's drift (10-30 % within minutes here) falls on both; fine-tuning samples/s are from each run's metrics.json
(time in steps only), masked-LM's the stage's samples over its wall seconds. One epoch says nothing about accuracy
(at seed 42 every one-epoch run with token batches still sat on the majority class, a seed-43 one did not): the
full-budget runs in docs/benchmarks.md section 10 do.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def _order(settings: list[int], rounds: int) -> list[int]:
    forward = list(settings)
    return [s for r in range(rounds) for s in (forward if r % 2 == 0 else forward[::-1])]


def _one_run(args: argparse.Namespace, tokens: int, output: Path) -> dict:
    command = [
        sys.executable, "-m", "commands.main", "train", "--data", args.data, "--text-col", args.text_col,
        "--label-col", args.label_col, "--seed", "42", "--base-model", "scratch:nano", "--time-budget", "0",
        "--pretrain-epochs", "1", "--epochs", "1", "--ema-decay", "0.99", "--max-seq-len", "128", "--no-baseline",
        "--no-ngrams", "--no-progress", "--batch-tokens", str(tokens), "--output", str(output),
    ]  # fmt: skip
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = json.loads((output / "metrics.json").read_text(encoding="utf-8"))
    pretrain = metrics["pretrain"]
    return {
        "batch_tokens": tokens,
        "fine_tuning_samples_per_second": metrics["train_samples_per_second"],
        "masked_lm_samples_per_second": round(pretrain["samples"] / pretrain["seconds"], 2),
        "fine_tuning_steps": metrics["steps"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--text-col", default="text")
    parser.add_argument("--label-col", default="label")
    parser.add_argument("--settings", type=int, nargs="+", default=[0, 2048], help="--batch-tokens values; 0: off")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", default="docs/bench/batch-tokens.json")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        for k, tokens in enumerate(_order(args.settings, args.rounds)):
            runs.append(_one_run(args, tokens, Path(scratch) / f"run-{k}"))
            print(json.dumps(runs[-1]), flush=True)
    means = {
        str(s): {
            key: round(sum(r[key] for r in runs if r["batch_tokens"] == s) / args.rounds, 2)
            for key in ("fine_tuning_samples_per_second", "masked_lm_samples_per_second")
        }
        for s in args.settings
    }
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False).stdout.strip()
    result = {"data": args.data, "commit": commit, "order": _order(args.settings, args.rounds), "runs": runs}
    result["means"] = means
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(means, indent=2))


if __name__ == "__main__":
    main()
