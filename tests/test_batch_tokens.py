"""--batch-tokens: batches of at most N padded tokens, the same number of them every epoch, in every stage."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ernie_cls.errors import ConfigError
from tests.conftest import tiny_train_config
from training import batching
from training.batching import length_bucketed_batches, token_budget_batches


def _shape(batches: list[list[int]], lengths: list[int]) -> list[tuple[int, int]]:
    return sorted((len(b), max(lengths[i] for i in b)) for b in batches)


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 140), min_size=1, max_size=400),
    spare=st.integers(0, 4000),
    seeds=st.lists(st.integers(0, 2**32), min_size=2, max_size=4),
)
def test_every_shuffle_gives_the_same_batch_shapes_within_the_budget_and_each_text_once(lengths, spare, seeds):
    """The loop's step schedule counts on it (a reverted prototype's batch count moved with the shuffle, so an
    epoch could end without its evaluation); ties in length, one text, a budget of exactly the longest text."""
    budget = max(lengths) + spare
    shapes = []
    for seed in seeds:
        batches = token_budget_batches(lengths, budget, random.Random(seed))
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        assert all(size * longest <= budget for size, longest in _shape(batches, lengths))
        shapes.append(_shape(batches, lengths))
    assert all(shape == shapes[0] for shape in shapes)


def test_a_training_set_larger_than_the_text_batches_sort_window_keeps_its_batch_shapes_across_epochs():
    """The reverted prototype sorted within windows of 50 x 32 texts, as length_bucketed_batches does: not that."""
    lengths = np.random.default_rng(1).integers(3, 130, size=6000).tolist()
    shapes = [_shape(token_budget_batches(lengths, 2048, random.Random(seed)), lengths) for seed in range(5)]
    assert all(shape == shapes[0] for shape in shapes)


def test_short_texts_share_big_batches_long_ones_small_and_a_text_over_the_budget_goes_alone():
    lengths = np.random.default_rng(0).integers(3, 130, size=1000).tolist()
    batches = token_budget_batches(lengths, 1024, random.Random(0))
    size_by_longest = {max(lengths[i] for i in b): len(b) for b in batches}
    assert size_by_longest[min(size_by_longest)] > 32 > size_by_longest[max(size_by_longest)]
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded / sum(lengths) < 1.1  # as little padding as the 32-text batches (test_training.py)
    assert sorted(map(len, token_budget_batches([5000, 3, 4], 1024, random.Random(0)))) == [1, 2]
    texts = batching.training_batches(lengths, 32, 0, random.Random(7))
    assert texts == length_bucketed_batches(lengths, 32, random.Random(7))  # 0: the 32-text batches, untouched


def _record(monkeypatch, owner, name: str, note) -> list:
    """Wrap `owner.name` (a function or a method) so that each call also appends note(*args, result) to the list."""
    real, seen = getattr(owner, name), []

    def wrapper(*args):
        result = real(*args)
        seen.append(note(*args, result))
        return result

    monkeypatch.setattr(owner, name, wrapper)
    return seen


def _batches(lengths, batch_size, max_tokens, rng, batches):
    return max_tokens, batches, [len(b) * max(lengths[i] for i in b) for b in batches]


def test_masked_lm_fine_tuning_and_qat_all_batch_by_tokens_and_evaluate_at_each_epoch_end(
    small_csv, tmp_path, monkeypatch
):
    import paddle

    from training import loop, pretrain
    from training import robust as robust_module
    from training.finetune import train
    from training.qat import QATConfig, run_qat
    from training.robust import RobustTraining

    fine = _record(monkeypatch, loop, "training_batches", _batches)
    mlm = _record(monkeypatch, pretrain, "training_batches", _batches)
    # what a step really pads (noisy re-encodes included), each text weight, each optimizer step's clip norm
    steps = _record(monkeypatch, RobustTraining, "batch_ids", lambda r, batch, ids: len(ids) * max(map(len, ids)))
    weights = _record(monkeypatch, RobustTraining, "text_weight", lambda r, n, w: (n, r.texts_per_batch, w))
    clip_norms = _record(monkeypatch, paddle.nn.ClipGradByGlobalNorm, "_dygraph_clip", lambda c, pg, _: c.clip_norm)
    cut = _record(monkeypatch, robust_module, "_cut", lambda ids, width, _: len(ids) > width)
    # noise makes texts longer than the ones the batches were packed for: they are cut back to the batch's width
    options = dict(batch_tokens=64, epochs=2, pretrain_epochs=1, noise_augment=0.9, noise_rate=0.3, adversarial="fgm")
    cfg = tiny_train_config(tmp_path / "run", small_csv, **options)
    metrics = train(cfg)
    assert mlm and all(budget == 64 and max(tokens) <= 64 for budget, _, tokens in mlm)
    assert fine and all(budget == 64 for budget, _, _ in fine) and steps and max(steps) <= 64
    assert any(cut)  # the noise did make texts longer than their batch's width: the cut was needed
    batches = fine[0][1]
    texts = sum(map(len, batches))
    assert len(batches) > -(-texts // 16)  # 64 tokens hold fewer texts than --batch-size 16: more batches
    assert [h["step"] for h in metrics["history"]] == [len(batches), 2 * len(batches)]  # an evaluation ends each epoch
    # every text weighs the same: a batch of n texts counts n / the epoch's average texts per batch, in the step
    # and in FGM's extra pass, and the step clips the gradient at max_grad_norm before that weight
    step_weights = weights[::2]
    assert len(weights) == 2 * 2 * len(batches) and weights[1::2] == step_weights  # FGM asks for the same weight
    assert all(w == pytest.approx(n * len(batches) / texts) and avg == texts / len(batches) for n, avg, w in weights)
    assert sum(w for _, _, w in step_weights) == pytest.approx(2 * len(batches))  # an epoch averages 1 per step
    mlm_steps = len(clip_norms) - len(step_weights)  # masked-LM's own optimizer clips at 1.0 too
    assert clip_norms[mlm_steps:] == pytest.approx([w for _, _, w in step_weights])  # max_grad_norm 1.0 x weight
    assert len({round(w, 6) for _, _, w in step_weights}) > 1  # the weights do differ: the test can tell

    fine.clear()
    out = tmp_path / "q"
    qat = run_qat(
        QATConfig(checkpoint=str(tmp_path / "run" / "best"), output=str(out), batch_tokens=96, progress=False)
    )
    assert fine and all(budget == 96 for budget, _, _ in fine) and qat["steps"] == len(fine[0][1])


def test_noisy_copies_are_cut_to_the_width_the_batch_was_packed_for_keeping_their_sep(small_csv, tmp_path):
    from ernie_cls.tokenization import ErnieTokenizerFast, build_vocab
    from training.batching import encode
    from training.finetune import load_splits
    from training.robust import RobustTraining, _cut

    cfg = tiny_train_config(tmp_path / "run", small_csv, batch_tokens=64, noise_consistency=1.0, noise_rate=0.5)
    splits, label_map, _ = load_splits(cfg)
    tokenizer = ErnieTokenizerFast(build_vocab([e.text for e in splits.train], vocab_size=500))
    data = encode(splits.train, tokenizer, label_map)
    batch = sorted(range(len(data.ids)), key=lambda i: len(data.ids[i]))[:8]  # short texts: noise can outgrow them
    width = max(len(data.ids[i]) for i in batch)

    def copies(batch_tokens: int) -> list[list[int]]:  # the same noise (same seed) with and without a token budget
        robust = RobustTraining(replace(cfg, batch_tokens=batch_tokens), None, tokenizer, data, random.Random(0), False)
        return [ids for _ in range(20) for ids in robust.noisy_copy(batch)]

    assert max(map(len, copies(0))) > width  # the noise does outgrow the batch: the cut has work to do
    cut = copies(64)
    assert max(map(len, cut)) == width and all(ids[-1] == tokenizer.sep_id for ids in cut)
    assert _cut([101, 5, 6, 7, 8, 102], 4) == [101, 5, 6, 102] and _cut([101, 5, 102], 4) == [101, 5, 102]
    assert _cut([101, 5, 6, 7, 8, 102], None) == [101, 5, 6, 7, 8, 102]  # --batch-size batches: no cut


def test_the_time_budget_sizes_its_stages_with_the_token_batches(monkeypatch):
    from training import finetune
    from training.batching import Encoded

    seen = []

    def probe(*args):
        seen.append(args[-1])  # max_tokens
        return 0.01

    monkeypatch.setattr(finetune, "probe_seconds_per_step", probe)
    monkeypatch.setattr(finetune, "probe_mlm_seconds_per_step", probe)
    ids = [[1] * n for n in np.random.default_rng(3).integers(3, 60, size=500).tolist()]
    data = Encoded(ids, np.zeros(500, dtype=np.int64))
    cfg = tiny_train_config(Path("unused"), Path("x.csv"), time_budget=1, epochs=None, batch_tokens=256)
    _, plan = finetune._size_stages(cfg, True, SimpleNamespace(config=None), None, data, 50)
    lengths = [len(x) for x in ids]
    assert seen == [256, 256] and plan is not None
    assert plan.steps_per_epoch == len(token_budget_batches(lengths, 256, random.Random(0))) != -(-500 // 16)


def test_a_budget_that_cannot_hold_one_text_is_refused_before_anything_is_written(small_csv, tmp_path, trained_run):
    from training.finetune import train
    from training.qat import QATConfig, run_qat

    for bad in (-1, 16):
        with pytest.raises(ConfigError, match="--batch-tokens") as err:
            tiny_train_config(tmp_path / "a", small_csv, batch_tokens=bad).validate()
        assert "2048" in err.value.hint
    out = tmp_path / "auto"
    with pytest.raises(ConfigError, match=r"max_seq_len \(chosen from the training texts\) \d+ tokens") as err:
        train(tiny_train_config(out, small_csv, batch_tokens=20, max_seq_len=None))
    assert "--max-seq-len 20" in err.value.hint
    assert not out.exists() or not any(out.iterdir())
    with pytest.raises(ConfigError, match="the FP32 checkpoint's max_seq_len 32"):
        run_qat(QATConfig(checkpoint=str(trained_run / "best"), output=str(tmp_path / "q"), batch_tokens=8))
    assert not (tmp_path / "q").exists()


def test_the_time_budget_probes_and_counts_the_batches_training_will_run():
    from training.budget import probe_batches

    ids = [[1] * n for n in np.random.default_rng(2).integers(3, 130, size=800).tolist()]
    lengths = [len(x) for x in ids]
    training = token_budget_batches(lengths, 1024, random.Random(5))
    probe = probe_batches(ids, 32, 1024)
    assert sorted(probe.batch_tokens) == sorted(size * longest for size, longest in _shape(training, lengths))
    assert all(len(b) * max(lengths[i] for i in b) <= 1024 for b in probe.timed)


def test_the_manifest_says_how_the_model_and_its_qat_were_batched(int8_artifact):
    from ernie_cls.artifact import read_manifest

    provenance = read_manifest(int8_artifact).manifest["provenance"]
    assert provenance["training_config"]["batch_size"] == 16 and provenance["training_config"]["batch_tokens"] == 0
    assert provenance["qat"]["batch_size"] == 32 and provenance["qat"]["batch_tokens"] == 0


def test_without_a_token_budget_the_step_is_as_before_and_masked_lm_follows_batch_size(
    small_csv, tmp_path, monkeypatch
):
    """--batch-tokens 0 (the default): no text weight, the clip norm stays max_grad_norm, 16-text masked-LM batches."""
    import paddle

    from training import pretrain
    from training.finetune import train
    from training.robust import RobustTraining

    mlm = _record(monkeypatch, pretrain, "training_batches", lambda lengths, size, tokens, rng, _: (size, tokens))
    weights = _record(monkeypatch, RobustTraining, "text_weight", lambda r, n, w: w)
    clip_norms = _record(monkeypatch, paddle.nn.ClipGradByGlobalNorm, "_dygraph_clip", lambda c, pg, _: c.clip_norm)
    metrics = train(tiny_train_config(tmp_path / "run", small_csv, pretrain_epochs=1, max_grad_norm=0.5))
    assert mlm and set(mlm) == {(16, 0)}  # the config's --batch-size 16, not a fixed 32
    assert weights and set(weights) == {1.0} and len(weights) == metrics["steps"]
    assert clip_norms[-metrics["steps"] :] == [0.5] * metrics["steps"]


def test_the_probe_costs_token_batches_by_their_width_not_by_their_equal_tokens():
    from training.budget import average_step_seconds, probe_batches

    ids = [[1] * n for n in np.random.default_rng(4).integers(3, 130, size=2000).tolist()]
    probe = probe_batches(ids, 32, 2048)
    widths = [max(len(ids[i]) for i in b) for b in probe.timed]
    tokens = [len(b) * w for b, w in zip(probe.timed, widths, strict=True)]
    assert sorted(tokens)[1] > 0.9 * max(tokens)  # a token budget: about the same tokens, any width (one partial)
    timings = [(t * (1 + w / 50) / 1e4, t, len(b)) for t, w, b in zip(tokens, widths, probe.timed, strict=True)]
    batch_widths = np.array(probe.batch_tokens) / np.array(probe.batch_texts)
    truth = float((np.array(probe.batch_tokens) * (1 + batch_widths / 50) / 1e4).mean())  # linear in width: exact
    assert average_step_seconds(probe, timings) == pytest.approx(truth, rel=1e-9)
    points = sorted((t, seconds) for seconds, t, _ in timings)
    by_tokens = np.interp(probe.batch_tokens, [t for t, _ in points], [c for _, c in points])
    assert abs(float(by_tokens.mean()) - truth) > 0.02 * truth  # the old interpolation on tokens misses it


def test_the_docs_throughput_figures_are_the_recorded_benchs():
    import json

    root = Path(__file__).resolve().parents[1]
    means = json.loads((root / "docs/bench/batch-tokens.json").read_text("utf-8"))["means"]
    fine = means["2048"]["fine_tuning_samples_per_second"] / means["0"]["fine_tuning_samples_per_second"] - 1
    mlm = means["2048"]["masked_lm_samples_per_second"] / means["0"]["masked_lm_samples_per_second"] - 1
    benchmarks = (root / "docs/benchmarks.md").read_text("utf-8")
    assert f"**+{fine * 100:.1f} %**" in benchmarks and f"**+{mlm * 100:.1f} %**" in benchmarks
    assert f"+{fine * 100:.0f} % samples/s on the second dataset" in (root / "README.md").read_text("utf-8")


def test_the_docs_accuracy_table_is_the_recorded_runs():
    import json

    root = Path(__file__).resolve().parents[1]
    runs = json.loads((root / "docs/bench/batch-tokens-full.json").read_text("utf-8"))["runs"]
    benchmarks = (root / "docs/benchmarks.md").read_text("utf-8")
    for run in runs:
        dev, test = run["dev_transformer_alone"], run["test"]
        row = next(line for line in benchmarks.splitlines() if line.startswith("| ") and f"| {run['commit']} |" in line)
        assert f"{dev['accuracy'] * 100:.2f} % / {dev['macro_f1']:.4f}" in row
        assert f"{test['accuracy'] * 100:.2f} % / {test['macro_f1']:.4f}" in row
        assert f"{run['plan']['steps_per_epoch']}, {run['plan']['fine_tune_steps_run']}" in row
        assert f"{dev['membership_advantage']:.3f}" in row
    shipped = next(r for r in runs if r["commit"] == "53c01d8")
    blended = [v["membership_advantage"] for w, v in shipped["dev_by_transformer_weight"].items() if w != "1.0"]
    assert min(blended) > shipped["membership_bound"] and shipped["transformer_weight_chosen"] == 1.0  # no share fit
    assert f"the lowest blended share's was {min(blended):.3f}" in benchmarks
    assert shipped["dev_transformer_alone"]["macro_f1"] < runs[0]["dev_transformer_alone"]["macro_f1"]  # off: no gain
