"""Masked-LM pretraining for scratch models: masking follows BERT/ERNIE's recipe and the stage plugs into train."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pypinyin import Style, lazy_pinyin

from ernie_cls.errors import ConfigError
from ernie_cls.tokenization import ErnieTokenizerFast, build_vocab
from tests.conftest import tiny_train_config, waimai_rows
from training.checkpoint import TRAINING_CONFIG_FILE
from training.finetune import train
from training.noise import HomophoneTable
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


def test_homophone_share_puts_homophones_where_mask_would_go():
    texts = [r["review"] for r in waimai_rows(200)]
    tok = ErnieTokenizerFast(build_vocab(texts, vocab_size=2000), max_seq_len=64)
    ids = tok.encode_ids(texts)
    table = HomophoneTable.from_texts(texts).token_ids(tok.vocab)
    by_id = {i: t for t, i in tok.vocab.items()}
    for token, options in list(table.items())[:50]:  # the id table keeps the pinyin
        assert {lazy_pinyin(by_id[o], style=Style.NORMAL)[0] for o in options} == {
            lazy_pinyin(by_id[token], style=Style.NORMAL)[0]
        }

    def outcome(share: float) -> tuple[float, float]:
        input_ids, _, positions, labels = mask_batch(ids, tok, np.random.default_rng(0), 0.15, table, share)
        put = input_ids.reshape(-1)[positions]
        has = np.array([t in table for t in labels.tolist()])
        homophone = np.array([p in table.get(t, ()) for p, t in zip(put.tolist(), labels.tolist(), strict=True)])
        return homophone[has].mean(), (put[has] == tok.vocab["[MASK]"]).mean()

    homophone, masked = outcome(0.0)
    assert homophone < 0.02 and 0.75 < masked < 0.85  # off: plain BERT masking (random ids rarely hit a homophone)
    homophone, masked = outcome(0.5)
    assert 0.35 < homophone < 0.45 and 0.35 < masked < 0.45
    homophone, masked = outcome(1.0)
    assert 0.75 < homophone < 0.85 and masked == 0.0


def test_pretrain_homophones_trains_and_needs_the_mlm_stage(small_csv, tmp_path):
    metrics = train(tiny_train_config(tmp_path / "r", small_csv, epochs=1, pretrain_epochs=1, pretrain_homophones=0.5))
    recorded = json.loads((tmp_path / "r" / "best" / TRAINING_CONFIG_FILE).read_text(encoding="utf-8"))
    assert metrics["pretrain"]["samples"] > 0 and recorded["pretrain_homophones"] == 0.5
    with pytest.raises(ConfigError, match="--pretrain-epochs"):
        train(tiny_train_config(tmp_path / "s", small_csv, epochs=1, pretrain_homophones=0.5))
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        train(tiny_train_config(tmp_path / "t", small_csv, epochs=1, pretrain_epochs=1, pretrain_homophones=1.5))
