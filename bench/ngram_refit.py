"""Why `train` refits the n-gram branch on train+dev after dev has chosen its share, measured on dev alone: the branch
fitted on 90 % of the training rows (a few random subsets) against all of them, each blended with the same
transformer at the share dev chooses, scored on dev (docs/benchmarks.md section 10). Adding the dev split's rows at
the end is the same step again (+14 % rows on a 70/10/20 split), which dev can no longer judge.

    python -m bench.ngram_refit --checkpoint runs/second-128/best [--subsets 3]
"""

from __future__ import annotations

import argparse
import json
import random

import numpy as np

from training import paddle_env


def _transformer_logits(model, tokenizer, ids: list[list[int]]) -> np.ndarray:
    from training import ngrams
    from training.loop import predict_logits
    from training.ngram_model import head_of

    out = predict_logits(model, tokenizer, ids)
    if hasattr(model, "ngram_table"):  # a checkpoint with a branch: its transformer part, recovered exactly
        return ngrams.unblend(out, head_of(model).logits(ids), float(model.config.ngram_weight))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a best/ directory written by `ernie-cls train`")
    parser.add_argument("--subsets", type=int, default=3, help="random 90 %% subsets of the training rows")
    args = parser.parse_args()
    paddle_env.configure()
    from training import ngrams
    from training.batching import encode
    from training.checkpoint import recorded_config
    from training.finetune import load_splits
    from training.modeling import load_checkpoint

    model, tokenizer, label_map = load_checkpoint(args.checkpoint)
    splits = load_splits(recorded_config(args.checkpoint))[0]
    train, dev = encode(splits.train, tokenizer, label_map), encode(splits.dev, tokenizer, label_map)
    special, vocab = (tokenizer.pad_id, tokenizer.cls_id, tokenizer.sep_id), int(model.config.vocab_size)
    train_logits, dev_logits = (_transformer_logits(model, tokenizer, d.ids) for d in (train, dev))
    results = []
    for subset in [*range(1, args.subsets + 1), None]:  # None: every training row
        rows = list(range(len(train.ids)))
        rows = sorted(random.Random(subset).sample(rows, int(0.9 * len(rows)))) if subset else rows
        head = ngrams.fit_head([train.ids[i] for i in rows], train.labels[rows], len(label_map), vocab, special)
        assert head is not None
        members = random.Random(0).sample(rows, min(len(rows), ngrams.MEMBERSHIP_ROWS))
        scored = ngrams.Scored(
            train_logits[members], head.logits([train.ids[i] for i in members]), train.labels[members]
        )
        on_dev = ngrams.Scored(dev_logits, head.logits(dev.ids), dev.labels)
        weight, choice = ngrams.choose_weight(on_dev, scored)
        results.append(
            {
                "training_rows": len(rows),
                "subset_seed": subset,
                "ngram_alone_dev_accuracy": round(float((on_dev.ngram.argmax(-1) == dev.labels).mean()), 4),
                "chosen_transformer_weight": weight,
                "blend_dev": choice["by_weight"][str(weight)],
            }
        )
        print(json.dumps(results[-1]), flush=True)
    print(json.dumps({"checkpoint": args.checkpoint, "dev_rows": len(dev.ids), "results": results}, indent=2))


if __name__ == "__main__":
    main()
