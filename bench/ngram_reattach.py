"""The attach step of this version of `train` (share chosen on dev with the branch fitted on train, the branch then
refitted on train+dev) applied to an earlier run's transformer, and what the refit does to dev-based figures: test
accuracy of the result, the temperature fitted on dev with the served branch vs with the train-only branch, test ECE
under each, and the membership attack as verify runs it (docs/benchmarks.md section 10).

    python -m bench.ngram_reattach --checkpoint runs/second-ngram3/best [--output docs/bench/ngram-reattach.json]

A checkpoint that carries a branch is reduced to its transformer first (weights unchanged).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np

from training import paddle_env


def _transformer_checkpoint(checkpoint: Path, work: Path) -> Path:
    """best/ with the transformer alone (a checkpoint with a branch loses it; weights unchanged)."""
    from training.checkpoint import save_checkpoint, saved_records
    from training.modeling import load_checkpoint
    from training.ngram_model import without_ngrams

    model, tokenizer, label_map = load_checkpoint(checkpoint)
    if not hasattr(model, "ngram_table"):
        shutil.copytree(checkpoint, work)
        return work
    save_checkpoint(without_ngrams(model), tokenizer, label_map, saved_records(checkpoint), work)
    return work


def _calibration_and_attack(model, tokenizer, train, dev, test, label_map) -> dict:
    from ernie_cls.calibration import expected_calibration_error, fit_temperature, softmax
    from ernie_cls.privacy import membership_advantage
    from training import ngrams
    from training.loop import predict_logits
    from training.ngram_model import head_of

    served = head_of(model)
    held_out = ngrams.fit_head(train.ids, train.labels, len(label_map), served.vocab, served.special_ids)
    assert held_out is not None
    dev_out, test_out = predict_logits(model, tokenizer, dev.ids), predict_logits(model, tokenizer, test.ids)
    swapped = ngrams.swap_branch(dev_out, served.logits(dev.ids), held_out.logits(dev.ids), model.config.ngram_weight)
    out: dict = {"dev_accuracy_served": round(float((dev_out.argmax(-1) == dev.labels).mean()), 4)}
    for name, logits in (("served_branch", dev_out), ("train_only_branch", swapped)):
        t = fit_temperature(logits, dev.labels)
        out[f"temperature_on_dev_with_{name}"] = round(t, 4)
        out[f"test_ece_with_{name}_temperature"] = round(
            expected_calibration_error(softmax(test_out, t), test.labels), 4
        )
    rows = random.Random(0).sample(range(len(train.ids)), min(len(train.ids), 1000))  # verify's member rows
    members = predict_logits(model, tokenizer, [train.ids[i] for i in rows])
    n = min(1000, len(test.ids))  # verify's held-out rows: the first ones
    for t in (1.0, out["temperature_on_dev_with_train_only_branch"]):
        m = softmax(members, t)[np.arange(len(rows)), train.labels[rows]]
        h = softmax(test_out[:n], t)[np.arange(n), test.labels[:n]]
        out[f"membership_advantage_at_temperature_{t}"] = round(membership_advantage(m, h).advantage, 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a best/ directory written by `ernie-cls train`")
    parser.add_argument("--output", help="append the result to this JSON file (a list)")
    args = parser.parse_args()
    paddle_env.configure()
    from training.batching import encode
    from training.checkpoint import recorded_config
    from training.finetune import _attach_ngrams, _fit_ngrams, load_splits
    from training.loop import evaluate_encoded
    from training.modeling import load_checkpoint

    checkpoint = Path(args.checkpoint)
    best = _transformer_checkpoint(checkpoint, Path(tempfile.mkdtemp(prefix="reattach-")) / "best")
    splits = load_splits(recorded_config(checkpoint))[0]
    transformer, tokenizer, label_map = load_checkpoint(best)
    train, dev, test = (encode(rows, tokenizer, label_map) for rows in (splits.train, splits.dev, splits.test))
    alone = evaluate_encoded(transformer, tokenizer, test, label_map)
    head = _fit_ngrams(transformer, tokenizer, train, len(label_map))
    attached = _attach_ngrams(best, head, train, dev, refit=True) if head else None
    model, _, _ = load_checkpoint(best)
    result = {
        "checkpoint": str(checkpoint),
        "transformer_alone_test": {k: round(alone[k], 4) for k in ("accuracy", "macro_f1")},
        "transformer_weight": attached and attached["transformer_weight"],
        "fitted_on": attached and attached["fitted_on"],
        "dev_gain_confidence": attached and attached["dev_gain_confidence"],
        "dev_with_branch_fitted_on_train": attached and attached["dev_by_weight"][str(attached["transformer_weight"])],
        "test": {
            k: round(v, 4)
            for k, v in evaluate_encoded(model, tokenizer, test, label_map).items()
            if k in ("accuracy", "macro_f1")
        },
    }
    if hasattr(model, "ngram_table"):
        result.update(_calibration_and_attack(model, tokenizer, train, dev, test, label_map))
    print(json.dumps(result, indent=2))
    if args.output:
        path = Path(args.output)
        previous = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
        path.write_text(json.dumps([*previous, result], indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
