"""Logits for many pre-tokenised texts from any infer(input_ids, token_type_ids) function, in length-sorted
batches so each pads little; used by export, verify, the benchmarks and training's evaluation alike."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ernie_cls.tokenization import ErnieTokenizerFast


def logits_in_batches(
    infer: Callable[[np.ndarray, np.ndarray], np.ndarray],
    tokenizer: ErnieTokenizerFast,
    ids: list[list[int]],
    batch_size: int = 64,
) -> np.ndarray:
    """Logits for pre-tokenised sequences, in input order, from any infer(input_ids, token_type_ids) function;
    batches are sorted by length so they pad little."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: np.ndarray | None = None
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        logits = infer(*tokenizer.pad([ids[i] for i in idx]))
        if out is None:
            out = np.zeros((len(ids), logits.shape[1]), dtype=np.float32)
        out[idx] = logits
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)
