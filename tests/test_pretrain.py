"""Masked-LM pretraining for scratch models: masking follows BERT/ERNIE's recipe and the stage plugs into train."""

from __future__ import annotations

import numpy as np

from ernie_cls.tokenization import ErnieTokenizerFast, build_vocab
from tests.conftest import tiny_train_config, waimai_rows
from training.finetune import train
from training.pretrain import mask_batch


def test_masking_picks_15_percent_of_real_tokens_and_never_special_ones():
    texts = [r["review"] for r in waimai_rows(100)]
    tok = ErnieTokenizerFast(build_vocab(texts, vocab_size=2000), max_seq_len=64)
    ids = tok.encode_ids(texts)
    input_ids, _, positions, labels = mask_batch(ids, tok, np.random.default_rng(0), 0.15)
    real = sum(len(x) - 2 for x in ids)
    assert abs(len(positions) / real - 0.15) < 0.03
    original, _ = tok.pad(ids)
    flat_orig = original.reshape(-1)
    assert (flat_orig[positions] == labels).all()  # labels are the original tokens
    assert not set(labels.tolist()) & {tok.pad_id, tok.cls_id, tok.sep_id}
    changed = input_ids.reshape(-1)[positions] != labels
    masked = input_ids.reshape(-1)[positions] == tok.vocab["[MASK]"]
    assert 0.75 < masked.mean() < 0.85 and changed.mean() > masked.mean()  # ~80 % [MASK], some random
    untouched = np.ones(flat_orig.shape, bool)
    untouched[positions] = False
    assert (input_ids.reshape(-1)[untouched] == flat_orig[untouched]).all()


def test_training_with_mlm_pretraining_records_it(small_csv, tmp_path):
    metrics = train(tiny_train_config(tmp_path / "r", small_csv, epochs=1, pretrain_epochs=1))
    assert metrics["pretrain"]["samples"] > 0 and np.isfinite(metrics["pretrain"]["final_loss"])
