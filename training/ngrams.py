"""The n-gram branch: a linear model over hashed token-id 1-3-grams, fitted on the training rows and averaged with
the transformer inside the model's own graph (docs/benchmarks.md section 10).

    training ids -> ngram_features (numpy; the same arithmetic as the graph) -> logistic regression (scikit-learn)
    -> NgramHead(table [vocab + 2 x buckets, classes], bias): idf folded into the table
    -> after fine-tuning: the weight w chosen on dev among those whose membership-inference advantage (training rows
       against dev rows) stays below ADVANTAGE_BOUND or the transformer's own, and whose dev gain is not noise
       (GAIN_CONFIDENCE; w = 1: the branch is left out);
       then, when the run has test rows, `refit` on train+dev with the same settings
    -> modeling.ErnieWithNgrams: logits = w x log_softmax(transformer) + (1 - w) x log_softmax(n-gram)

Positions of an n-gram: unigrams index the vocabulary; a bigram (a, b) is row V + (a*M + b) mod B, a trigram
(a, b, c) row V + B + (((a*M + b) mod B) * 31 + c) mod B, with V the vocabulary size, M = V | 1 (odd, so that every
bit of a reaches the bucket: with an even M, (a*M) mod 2**17 forgets a's high bits) and B the buckets; the config
records (M, 31) with the checkpoint. An n-gram counts when none of its tokens is [PAD], [CLS] or [SEP]; each counts
1/sqrt(number of n-grams in the text). The graph computes the same with int32 Mul/Add/Mod (TensorRT >= 8.5 takes Mod
on INT32), exact while a*M + b < 2**31, so vocabularies above MAX_VOCAB get no branch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

import numpy as np

from ernie_cls.privacy import MAX_ADVANTAGE, membership_advantage, noise_level

log = logging.getLogger(__name__)

NGRAM_CONFIG_KEYS = ("ngram_weight", "ngram_buckets", "ngram_special_ids", "ngram_multipliers")  # ngram_model.py
FITTED_ON_KEY = "ngram_fitted_on"  # "train" or "train+dev"; absent in checkpoints written before the refit existed
BRANCH_CONFIG_KEYS = (*NGRAM_CONFIG_KEYS, FITTED_ON_KEY)  # every key a branch adds to config.json
BUCKETS = 1 << 17
TRIGRAM_MULTIPLIER = 31
MAX_VOCAB = 46340  # (V-1)*(V|1) + V-1 < 2**31: the bigram hash stays exact in int32
# Decided on the second dataset's dev split (docs/benchmarks.md section 10): a linear model over 265k sparse features
# memorises its training rows (membership advantage 0.24-0.46 alone at C 1-10; `ernie-cls verify` fails above 0.15);
# strong regularisation and only n-grams seen in at least 5 training texts keep it near 0.11, and C 0.02 scored best
# on dev among the settings within the bound.
INVERSE_REGULARISATION = 0.02  # scikit-learn's C
MIN_TEXTS = 5
# Margin for sampling noise: verify scores the same training rows against the test rows, with its temperature.
ADVANTAGE_BOUND = MAX_ADVANTAGE - 0.03
MEMBERSHIP_ROWS = 1000  # = VerifyConfig.membership_rows: the same training rows (random.Random(0).sample)
WEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # transformer's share; 1.0 = no branch
# The branch stays only when dev is sure it helps: its macro-F1 gain over the transformer alone is positive in at
# least this share of bootstrap resamples of the dev rows (one-sided 95 %). On waimai_10k's 600 dev rows the branch
# won by one text (P 0.69) and cost 0.46 pt on test; on the second dataset's 730 it won by 0.025-0.028 (P >= 0.98).
GAIN_CONFIDENCE = 0.95
BOOTSTRAP_SAMPLES = 1000


def multipliers(vocab: int) -> tuple[int, int]:
    """(bigram, trigram) hash multipliers."""
    return vocab | 1, TRIGRAM_MULTIPLIER


@dataclass
class NgramHead:
    """The fitted branch: logits = (sum of table rows of a text's n-grams) / sqrt(count) + bias."""

    table: np.ndarray  # [vocab + 2 x buckets, classes] float32
    bias: np.ndarray  # [classes] float32
    vocab: int
    buckets: int
    special_ids: tuple[int, ...]
    fit_seconds: float
    fitted_on: str = "train"  # the rows the table was fitted on: "train", or "train+dev" after `refit`

    @property
    def multipliers(self) -> tuple[int, int]:
        return multipliers(self.vocab)

    def logits(self, ids: list[list[int]]) -> np.ndarray:
        features = ngram_features(ids, self.vocab, self.buckets, self.special_ids)
        return np.asarray(features @ self.table) + self.bias


def ngram_positions(
    ids: list[list[int]], vocab: int, buckets: int, special_ids: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """(table rows [N, 3T], weights [N, 3T]) of each text's n-grams; a weight is 0 where the n-gram does not count."""
    pad = special_ids[0]
    bigram_multiplier, trigram_multiplier = multipliers(vocab)
    width = max((len(x) for x in ids), default=0)
    padded = np.full((len(ids), width + 2), pad, dtype=np.int64)
    for r, seq in enumerate(ids):
        padded[r, : len(seq)] = seq
    valid = ~np.isin(padded, special_ids)
    a, b, c = padded[:, :-2], padded[:, 1:-1], padded[:, 2:]
    va, vb, vc = valid[:, :-2], valid[:, 1:-1], valid[:, 2:]
    bigram = (a * bigram_multiplier + b) % buckets
    trigram = (bigram * trigram_multiplier + c) % buckets
    rows = np.concatenate([a, vocab + bigram, vocab + buckets + trigram], axis=1)
    mask = np.concatenate([va, va & vb, va & vb & vc], axis=1).astype(np.float32)
    count = np.maximum(mask.sum(1, keepdims=True), 1.0)
    return rows, mask / np.sqrt(count)


def ngram_features(ids: list[list[int]], vocab: int, buckets: int, special_ids: tuple[int, ...]):
    """The texts' n-gram weights as a sparse [N, vocab + 2 x buckets] matrix (repeats summed)."""
    from scipy import sparse

    rows, weights = ngram_positions(ids, vocab, buckets, special_ids)
    keep = weights > 0
    matrix = sparse.csr_matrix(
        (weights[keep], (np.nonzero(keep)[0], rows[keep])), shape=(len(ids), vocab + 2 * buckets)
    )
    matrix.sum_duplicates()
    return matrix


def training_matrix(ids: list[list[int]], vocab: int, special_ids: tuple[int, ...], min_texts: int = MIN_TEXTS):
    """(sparse features x column weight, column weights): the idf, 0 for n-grams in fewer than `min_texts` texts."""
    from scipy import sparse

    x = ngram_features(ids, vocab, BUCKETS, special_ids)
    df = np.asarray((x > 0).sum(0)).ravel()
    column_weights = (np.log((1 + x.shape[0]) / (1 + df)) + 1) * (df >= min_texts)
    return x @ sparse.diags(column_weights), column_weights


def linear_model(c: float = INVERSE_REGULARISATION, balanced: bool = True):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=3000, C=c, class_weight="balanced" if balanced else None)


def fit_head(
    ids: list[list[int]],
    labels: np.ndarray,
    classes: int,
    vocab: int,
    special_ids: tuple[int, ...],
    c: float = INVERSE_REGULARISATION,
    min_texts: int = MIN_TEXTS,
    balanced: bool = True,
) -> NgramHead | None:
    """Logistic regression on the training rows' n-grams (idf-weighted); None when the vocabulary is too large for
    the graph's int32 hashing or the rows hold fewer than two classes."""
    if vocab > MAX_VOCAB or len(set(labels.tolist())) < 2:
        log.info("n-gram branch: skipped (vocabulary %d > %d or fewer than two classes)", vocab, MAX_VOCAB)
        return None
    start = time.perf_counter()
    x, column_weights = training_matrix(ids, vocab, special_ids, min_texts)
    # balanced: macro-F1 is the selection metric; on the second dataset's dev split it lifted the blend's F1 by 0.005
    model = linear_model(c, balanced).fit(x, labels)
    coef = np.zeros((classes, x.shape[1]))
    bias = np.full(classes, -30.0)  # a class the rows never show (not reachable through `train`) stays improbable
    if model.coef_.shape[0] == 1:  # binary: one decision d for classes_[1]; softmax([-d/2, d/2]) = sigmoid(d)
        coef[model.classes_] = np.stack([-model.coef_[0], model.coef_[0]]) / 2
        bias[model.classes_] = np.array([-model.intercept_[0], model.intercept_[0]]) / 2
    else:
        coef[model.classes_], bias[model.classes_] = model.coef_, model.intercept_
    table = (coef * column_weights).T.astype(np.float32)
    seconds = time.perf_counter() - start
    log.info("n-gram branch: fitted on %d texts in %.1f s", len(ids), seconds)
    return NgramHead(table, bias.astype(np.float32), vocab, BUCKETS, tuple(special_ids), round(seconds, 1))


def refit(head: NgramHead, ids: list[list[int]], labels: np.ndarray, fitted_on: str = "train+dev") -> NgramHead | None:
    """The same branch (vocabulary, hashing, settings) fitted again on other rows: by `train` on train+dev once dev
    has chosen the share, as the baseline is (on the second dataset's dev split, 11 % more training rows lifted the
    branch alone by 0.4-0.8 pt: docs/benchmarks.md section 10); by export on train alone, for the temperature
    (release/held_out_branch.py). None if the rows cannot be fitted."""
    again = fit_head(ids, labels, head.table.shape[1], head.vocab, head.special_ids)
    return replace(again, fitted_on=fitted_on) if again is not None else None


def log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def blend(transformer_logits: np.ndarray, ngram_logits: np.ndarray, weight: float) -> np.ndarray:
    return weight * log_softmax(transformer_logits) + (1 - weight) * log_softmax(ngram_logits)


def unblend(blended: np.ndarray, ngram_logits: np.ndarray, weight: float) -> np.ndarray:
    """The transformer's log-probabilities inside a blended output (exact: the output is not renormalised)."""
    return (blended - (1 - weight) * log_softmax(ngram_logits)) / weight


def swap_branch(outputs: np.ndarray, served: np.ndarray, other: np.ndarray, weight: float) -> np.ndarray:
    """Blended outputs with the n-gram part `served` replaced by `other` (n-gram logits on the same rows)."""
    return blend(unblend(outputs, served, weight), other, weight)


@dataclass
class Scored:
    """Both branches' logits on some rows, and their gold labels."""

    transformer: np.ndarray
    ngram: np.ndarray
    gold: np.ndarray

    def true_label_probability(self, weight: float) -> np.ndarray:
        served = log_softmax(blend(self.transformer, self.ngram, weight))  # what softmax of the output gives
        return np.exp(served[np.arange(len(self.gold)), self.gold])


def choose_weight(dev: Scored, members: Scored) -> tuple[float, dict]:
    """The transformer's share with the best dev macro-F1 (then accuracy, then the larger share) among the shares
    whose membership advantage (`members`: training rows, against dev) is at most ADVANTAGE_BOUND, or at most the
    transformer's own (share 1.0, always allowed) when that is higher. When dev is too small for the attack to
    resolve the bound (its noise level is above it), only 1.0 is allowed; and the chosen share must beat 1.0's
    macro-F1 in GAIN_CONFIDENCE of bootstrap resamples of dev, else 1.0. -> (w, report per share)."""
    classes = dev.transformer.shape[1]
    noise = noise_level(len(members.gold), len(dev.gold))
    report: dict = {}
    predictions = {w: blend(dev.transformer, dev.ngram, w).argmax(-1) for w in WEIGHTS}
    for w, pred in predictions.items():
        attack = membership_advantage(members.true_label_probability(w), dev.true_label_probability(w))
        report[str(w)] = {
            "accuracy": round(float((pred == dev.gold).mean()), 4),
            "macro_f1": round(macro_f1(dev.gold, pred, classes), 4),
            "membership_advantage": round(attack.advantage, 4),
        }
    # the branch may not push the attack past the bound, nor past the transformer's own when that is higher already
    ceiling = max(ADVANTAGE_BOUND, report["1.0"]["membership_advantage"])
    allowed = [w for w in WEIGHTS if report[str(w)]["membership_advantage"] <= ceiling and noise <= ADVANTAGE_BOUND]
    best = max(allowed or [1.0], key=lambda w: (report[str(w)]["macro_f1"], report[str(w)]["accuracy"], w))
    confidence = None
    if best < 1:
        confidence = gain_confidence(dev.gold, predictions[best], predictions[1.0], classes)
        best = best if confidence >= GAIN_CONFIDENCE else 1.0
    return best, {
        "by_weight": report,
        "attack_noise_level": round(noise, 4),
        "ceiling": round(ceiling, 4),
        "gain_confidence": confidence,
    }


def gain_confidence(gold: np.ndarray, pred: np.ndarray, baseline: np.ndarray, classes: int) -> float:
    """The share of bootstrap resamples of the rows (seeded) in which `pred`'s macro-F1 beats `baseline`'s."""
    rng = np.random.default_rng(0)
    wins = 0
    for _ in range(BOOTSTRAP_SAMPLES):
        rows = rng.integers(0, len(gold), len(gold))
        wins += macro_f1(gold[rows], pred[rows], classes) > macro_f1(gold[rows], baseline[rows], classes)
    return round(wins / BOOTSTRAP_SAMPLES, 4)


def macro_f1(gold: np.ndarray, pred: np.ndarray, classes: int) -> float:
    """scikit-learn's f1_score(average="macro", labels=range(classes), zero_division=0), in numpy (the bootstrap
    calls it 2 000 times; tested equal)."""
    tp = np.bincount(gold[gold == pred], minlength=classes)
    predicted, actual = np.bincount(pred, minlength=classes), np.bincount(gold, minlength=classes)
    denominator = predicted + actual
    f1 = np.divide(2 * tp, denominator, out=np.zeros(classes), where=denominator > 0)
    return float(f1.mean())
