"""Reference baseline on the same split: character 1-3-gram TF-IDF + logistic regression (scikit-learn).

A neural model that loses to this on the same rows is not yet useful, so `ernie-cls train` fits it too (seconds),
writes both into metrics.json and the model card, and warns when the model does not beat it. With a test split
the baseline trains on train+dev (the 80 % that is not test, as the usual 80/20 baseline does) and both are
compared on test; without one, it trains on train and both are compared on dev.

    python -m training.baseline --data data/waimai_10k.csv --seed 42
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time

import numpy as np

from training.data import Example, Splits, check_trainable, load_examples, stratified_split

log = logging.getLogger(__name__)

MODEL = "char 1-3-gram TF-IDF + LogisticRegression(C=10)"
NOT_BEATEN_HINT = (
    "bring pretrained weights (--base-model ernie-3.0-mini-zh, needs the model hub), more labelled data, or a longer "
    "run (--epochs, --pretrain-epochs for scratch models)"
)


def rows_sha256(examples: list[Example]) -> str:
    """Which rows were scored (text and label, in order): the model card compares scores only on the same rows."""
    return hashlib.sha256("".join(f"{e.label}\t{e.text}\n" for e in examples).encode("utf-8")).hexdigest()


def fit_and_score(train: list[Example], evaluate: list[Example]) -> dict:
    """Fit on `train`, score on `evaluate`: accuracy, and macro-F1 over every training label (a label absent from
    `evaluate` counts 0, as in the model's own metrics, so the two are averaged alike)."""
    from sklearn.metrics import accuracy_score, f1_score

    started = time.perf_counter()
    clf = _classifier().fit([e.text for e in train], [e.label for e in train])
    pred = clf.predict([e.text for e in evaluate])
    gold = [e.label for e in evaluate]
    return {
        "model": MODEL,
        "accuracy": float(accuracy_score(gold, pred)),
        "macro_f1": float(
            f1_score(gold, pred, labels=sorted({e.label for e in train}), average="macro", zero_division=0)
        ),
        "n": len(gold),
        "rows_sha256": rows_sha256(evaluate),
        "seconds": round(time.perf_counter() - started, 1),
    }


def _classifier():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=1)
    return make_pipeline(vec, LogisticRegression(max_iter=2000, C=10.0))


def out_of_fold_logits(train: list[Example], labels: list[str], folds: int = 5, seed: int = 42) -> np.ndarray:
    """The baseline as a distillation teacher: log-probabilities (one column per label, in `labels` order) for every
    training text from a model that did not see it (stratified k-fold), so the soft labels carry the baseline's
    honest uncertainty rather than its memory of the text. A class too small to appear in every fold gets a near-zero
    probability where its fold's model never saw it; a fold whose model would see a single class says nothing
    (uniform)."""
    import warnings

    from sklearn.model_selection import StratifiedKFold

    texts = np.array([e.text for e in train], dtype=object)
    gold = np.array([e.label for e in train], dtype=object)
    uniform = np.full((len(train), len(labels)), -np.log(len(labels)), dtype=np.float32)
    largest = max(np.unique(gold, return_counts=True)[1])
    if largest < 2:
        log.warning(
            "distillation: no class has 2 training rows, so the baseline teacher is uniform. "
            "Drop --teacher tfidf, or add training rows."
        )
        return uniform
    logits = uniform.copy()
    splitter = StratifiedKFold(min(folds, largest), shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # "the least populated class has only n members": handled above and below
        warnings.simplefilter("ignore", UserWarning)
        splits = list(splitter.split(texts, gold))
    for fit_rows, score_rows in splits:
        if len(set(gold[fit_rows])) < 2:
            continue  # uniform: a one-class model predicts nothing
        clf = _classifier().fit(texts[fit_rows], gold[fit_rows])
        logits[score_rows] = np.log(1e-6)
        columns = [labels.index(c) for c in clf.classes_]
        logits[np.ix_(score_rows, columns)] = clf.predict_log_proba(texts[score_rows])
    return logits


def on_splits(splits: Splits) -> dict:
    """The baseline on a training run's split: compared on test when there is one, else on dev."""
    if splits.test:
        return {**fit_and_score(splits.train + splits.dev, splits.test), "split": "test", "trained_on": "train+dev"}
    return {**fit_and_score(splits.train, splits.dev), "split": "dev", "trained_on": "train"}


def verdict(model_metrics: dict, baseline: dict) -> dict:
    """Whether the model beats the baseline on the baseline's split, on accuracy and on macro-F1 (both needed)."""
    ours = model_metrics[baseline["split"]]
    beats = {key: ours[key] > baseline[key] for key in ("accuracy", "macro_f1")}
    return {"split": baseline["split"], **beats, "beats_baseline": all(beats.values())}


def warn_if_not_beaten(model_metrics: dict, baseline: dict, result: dict) -> None:
    if result["beats_baseline"]:
        return
    ours = model_metrics[baseline["split"]]
    log.warning(
        "This model does not beat the %s baseline on the same %s rows (accuracy %.2f %% vs %.2f %%, macro-F1 %.4f vs "
        "%.4f). To do better: %s.",
        MODEL, baseline["split"], ours["accuracy"] * 100, baseline["accuracy"] * 100, ours["macro_f1"],
        baseline["macro_f1"], NOT_BEATEN_HINT,
    )  # fmt: skip


def run(data: str, seed: int, test_size: float = 0.2, dev_size: float = 0.1) -> dict:
    examples, _ = load_examples(data)
    check_trainable(examples, data)
    scores = on_splits(stratified_split(examples, test_size, dev_size, seed))
    return {
        "model": MODEL,
        "test_accuracy": scores["accuracy"],
        "test_macro_f1": scores["macro_f1"],
        "n_test": scores["n"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/waimai_10k.csv")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    print(json.dumps(run(args.data, args.seed), indent=2))


if __name__ == "__main__":
    main()
