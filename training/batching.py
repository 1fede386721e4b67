"""Texts -> token ids once (Encoded), and length-bucketed batches that pad little."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from ernie_cls.tokenization import ErnieTokenizerFast
from training.data import (
    Example,
    LabelMap,
)


@dataclass
class Encoded:
    ids: list[list[int]]
    labels: np.ndarray
    texts: list[str] = field(default_factory=list)  # normalised texts (noise augmentation re-encodes them)
    teacher_logits: np.ndarray | None = None  # distillation targets, one row per text


def encode(examples: list[Example], tokenizer: ErnieTokenizerFast, label_map: LabelMap) -> Encoded:
    texts = [e.text for e in examples]
    ids = tokenizer.encode_ids(texts, normalized=True)
    index = {raw: i for i, raw in enumerate(label_map.labels)}
    return Encoded(ids, np.array([index[e.label] for e in examples], dtype=np.int64), texts)


def length_bucketed_batches(
    lengths: list[int], batch_size: int, rng: random.Random, pool: int = 50, max_tokens: int = 0
) -> list[list[int]]:
    """Shuffle, then sort within pools of `pool` batches by length so each batch pads little, then shuffle batches.

    Keeps randomness across epochs while cutting padding: on waimai_10k this pads ~5% instead of ~3x. With
    `max_tokens`, a batch holds as many texts as fit in that many padded tokens (at least one) instead of
    `batch_size`: more short texts, fewer long ones (--batch-tokens; docs/benchmarks.md section 10).
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches: list[list[int]] = []
    span = batch_size * pool
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: lengths[i])
        if max_tokens > 0:
            batches.extend(_token_batches(chunk, lengths, max_tokens))
        else:
            batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def _token_batches(ascending: list[int], lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Consecutive runs of texts sorted by length whose padded size (count x the last one's length) fits."""
    batches: list[list[int]] = []
    current: list[int] = []
    for i in ascending:
        if current and (len(current) + 1) * lengths[i] > max_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches
