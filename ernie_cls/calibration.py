"""Confidence calibration: temperature scaling (Guo et al., 2017) and expected calibration error.

    dev logits + labels -> T minimising the negative log-likelihood of softmax(logits / T)   (fit at export)
    softmax(logits / T)  -> the service's scores, so "0.9" means right about 9 times in 10
    ECE: |accuracy - confidence| averaged over equal-width confidence bins, weighted by their counts

One scalar per model: it never changes the predicted label, only how sure the model says it is. numpy only, so the
service can import it.
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, low: float = 0.05, high: float = 20.0) -> float:
    """T > 0 minimising dev NLL: golden-section search on log T (the NLL is unimodal in T for fixed logits)."""
    if len(labels) == 0:
        return 1.0
    a, b = np.log(low), np.log(high)
    ratio = (np.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = _nll(logits, labels, np.exp(c)), _nll(logits, labels, np.exp(d))
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = _nll(logits, labels, np.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = _nll(logits, labels, np.exp(d))
    return float(np.exp((a + b) / 2))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def softmax_row(logits: list[float], temperature: float = 1.0) -> list[float]:
    """`softmax` of one row in plain Python, for the service's per-text results: for a row of a few labels, numpy's
    per-call overhead costs more than the arithmetic (16 us a row on the event loop)."""
    z = [x / temperature for x in logits]
    top = max(z)
    e = [math.exp(x - top) for x in z]
    total = sum(e)
    return [x / total for x in e]


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)
