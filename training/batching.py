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
