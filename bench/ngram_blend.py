"""Would an n-gram branch close the gap to the TF-IDF baseline? Measured without building it (docs/benchmarks.md
section 10): a trained checkpoint's log-probabilities averaged with a linear model's over features a graph can
compute from token ids (hashed 1-3-grams: Gather + ReduceSum), and with scikit-learn's own TF-IDF model, on the
run's dev and test split, for several averaging weights (choose the weight on dev, read test).

    python -m bench.ngram_blend --checkpoint runs/second-128/best --data runs/data/domain_sentiment.csv \\
        --text-col review --label-col label [--seed 42 --test-size 0.2 --dev-size 0.1] [--output F.json]

Features and fit: training/ngrams.py (the branch `train` now builds, whose defaults came from this and a privacy
bound); `--c 3 --min-texts 1 --unbalanced` is the setting of the first analysis (docs/bench/ngram-blend.json).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from training import paddle_env

WEIGHTS = (0.0, 0.3, 0.5, 0.7, 1.0)  # share of the checkpoint's log-probabilities


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--text-col", default=None)
    parser.add_argument("--label-col", default=None)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--test-size", type=float, default=0.2)
    parser.add_argument("--dev-size", type=float, default=0.1)
    parser.add_argument("--c", type=float, default=3.0, help="inverse regularisation of the n-gram model")
    parser.add_argument("--min-texts", type=int, default=1, help="n-grams seen in fewer training texts get no weight")
    parser.add_argument("--unbalanced", action="store_true", help="no class weights in the n-gram model")
    parser.add_argument("--output", default=None, help="also write the report here (JSON)")
    args = parser.parse_args()
    paddle_env.configure()
    from scipy.special import log_softmax
    from sklearn.metrics import f1_score

    from training.baseline import _classifier
    from training.data import load_examples, stratified_split
    from training.loop import predict_logits
    from training.modeling import load_checkpoint
    from training.ngrams import fit_head

    examples, _ = load_examples(args.data, args.text_col, args.label_col)
    splits = stratified_split(examples, args.test_size, args.dev_size, args.seed)
    model, tokenizer, label_map = load_checkpoint(args.checkpoint)
    if hasattr(model.config, "ngram_weight"):
        raise SystemExit(
            f"{args.checkpoint} already has the n-gram branch in its graph; this analysis blends it again. "
            "Hint: pass a checkpoint trained with --no-ngrams."
        )
    labels = list(label_map.labels)
    special = (tokenizer.pad_id, tokenizer.cls_id, tokenizer.sep_id)

    def encode(rows):
        return tokenizer.encode_ids([e.text for e in rows], normalized=True)

    def gold(rows) -> np.ndarray:
        return np.array([labels.index(e.label) for e in rows])

    ngram = fit_head(
        encode(splits.train), gold(splits.train), len(labels), int(model.config.vocab_size), special,
        c=args.c, min_texts=args.min_texts, balanced=not args.unbalanced,
    )  # fmt: skip
    assert ngram is not None
    tfidf = _classifier().fit([e.text for e in splits.train], [e.label for e in splits.train])
    tfidf_columns = [list(tfidf.classes_).index(label) for label in labels]
    report: dict = {}
    for name, rows in (("dev", splits.dev), ("test", splits.test)):
        ids, truth = encode(rows), gold(rows)
        ours = log_softmax(predict_logits(model, tokenizer, ids), -1)
        partners = {
            "hashed_ngrams": log_softmax(ngram.logits(ids), -1),
            "sklearn_tfidf": tfidf.predict_log_proba([e.text for e in rows])[:, tfidf_columns],
        }
        for partner, theirs in partners.items():
            for w in WEIGHTS:
                pred = (w * ours + (1 - w) * theirs).argmax(1)
                report.setdefault(partner, {}).setdefault(name, {})[str(w)] = {
                    "accuracy": round(float((pred == truth).mean()), 4),
                    "macro_f1": round(float(f1_score(truth, pred, average="macro")), 4),
                }
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
