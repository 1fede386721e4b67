"""Reference baseline on the same split: character 1-3-gram TF-IDF + logistic regression (scikit-learn).

A neural model that loses to this on the same test rows is not yet useful. It trains on train+dev (the 80 % that
is not test), as the usual 80/20 baseline does.

    python -m training.baseline --data data/waimai_10k.csv --seed 42
"""

from __future__ import annotations

import argparse
import json

from training.data import check_trainable, load_examples, stratified_split


def run(data: str, seed: int, test_size: float = 0.2, dev_size: float = 0.1) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    examples, _ = load_examples(data)
    check_trainable(examples, data)
    splits = stratified_split(examples, test_size, dev_size, seed)
    fit = splits.train + splits.dev
    vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=1)
    clf = LogisticRegression(max_iter=2000, C=10.0)
    clf.fit(vec.fit_transform([e.text for e in fit]), [e.label for e in fit])
    pred = clf.predict(vec.transform([e.text for e in splits.test]))
    gold = [e.label for e in splits.test]
    return {
        "model": "char 1-3-gram TF-IDF + LogisticRegression(C=10)",
        "test_accuracy": float(accuracy_score(gold, pred)),
        "test_macro_f1": float(f1_score(gold, pred, average="macro")),
        "n_test": len(gold),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/waimai_10k.csv")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    print(json.dumps(run(args.data, args.seed), indent=2))


if __name__ == "__main__":
    main()
