"""Texts -> token ids once (Encoded), and length-bucketed batches that pad little: of `batch_size` texts, or of at
most `max_tokens` padded tokens (--batch-tokens)."""

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


def length_bucketed_batches(lengths: list[int], batch_size: int, rng: random.Random, pool: int = 50) -> list[list[int]]:
    """Shuffle, then sort within pools of `pool` batches by length so each batch pads little, then shuffle batches.

    Keeps randomness across epochs while cutting padding: on waimai_10k this pads ~5% instead of ~3x.
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches: list[list[int]] = []
    span = batch_size * pool
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def token_budget_batches(lengths: list[int], max_tokens: int, rng: random.Random) -> list[list[int]]:
    """Batches of at most `max_tokens` padded tokens (a longer text goes alone): more short texts, fewer long ones.

    Shuffle, stable-sort by length, pack consecutive texts, shuffle the batches (fairseq's --max-tokens). The packing
    sees only the sorted lengths, so every epoch has the same number of batches of the same sizes - what the loop's
    step schedule and the time budget's plan count on - and only which texts of equal length share a batch, and the
    batches' order, change with the shuffle.
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    order.sort(key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and (len(current) + 1) * lengths[i] > max_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches


def training_batches(lengths: list[int], batch_size: int, max_tokens: int, rng: random.Random) -> list[list[int]]:
    """One epoch's batches: by padded tokens when `max_tokens` > 0, else of `batch_size` texts."""
    if max_tokens > 0:
        return token_budget_batches(lengths, max_tokens, rng)
    return length_bucketed_batches(lengths, batch_size, rng)


def batches_per_epoch(lengths: list[int], batch_size: int, max_tokens: int) -> int:
    """How many batches an epoch has: the same for every shuffle, in both batchings (what plans count steps by)."""
    return len(training_batches(lengths, batch_size, max_tokens, random.Random(0)))
