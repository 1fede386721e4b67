"""--time-budget and the options left auto (training/budget.py): the plan's arithmetic, and a real run that
resolves them, records them and keeps within its budget."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from tests.conftest import tiny_train_config
from training.budget import (
    MAX_PRETRAIN_EPOCHS,
    MAX_SCRATCH_EPOCHS,
    RESERVED_SHARE,
    SCRATCH_MAX_SEQ_LEN,
    apply_plan,
    choose_max_seq_len,
    explain_max_seq_len,
    plan_budget,
    without_budget,
)
from training.config import TrainConfig


def auto(**overrides) -> TrainConfig:
    return TrainConfig(output="o", data="d.csv", **overrides)


def test_max_seq_len_follows_the_p99_length_rounded_up_and_bounded():
    assert choose_max_seq_len([10] * 99 + [20]) == 32  # p99 ~ 20 + 2 -> 32 (the floor)
    assert choose_max_seq_len(list(range(1, 101))) == 112  # p99 = 99.01 + 2 -> 112
    assert choose_max_seq_len([5000] * 10) == 256  # the ceiling for pretrained models
    assert choose_max_seq_len([5000] * 10, SCRATCH_MAX_SEQ_LEN) == 128  # scratch presets (measured, section 10)
    line = explain_max_seq_len([10] * 90 + [500] * 10, 128)
    assert "10.0% of them are cut at 128 tokens" in line and "--max-seq-len" in line
    assert "cut" not in explain_max_seq_len([10] * 100, 32)
    assert choose_max_seq_len([]) == 32


def test_the_plan_spends_half_the_budget_on_masked_lm_and_the_rest_on_fine_tuning():
    plan = plan_budget(auto(time_budget=20), scratch=True, steps_per_epoch=200, dev_batches=10, step_s=0.5)
    epoch_s = 200 * 0.5  # 100 s
    usable = 20 * 60 * (1 - RESERVED_SHARE)
    assert plan.pretrain_epochs == round(usable / 2 / epoch_s) == 6
    assert plan.eval_every == 100  # two evaluations per epoch
    ft_epoch_s = epoch_s + 2 * 10 * 0.5 / 3
    assert plan.epochs == int((usable - 6 * epoch_s) / ft_epoch_s) == 4
    assert plan.estimated_seconds <= 20 * 60


def test_explicit_stages_win_and_pretrained_models_get_no_masked_lm():
    given = plan_budget(auto(epochs=2, pretrain_epochs=1), True, 200, 10, 0.5)
    assert (given.pretrain_epochs, given.epochs) == (1, 2)
    only_epochs = plan_budget(auto(epochs=2), True, 200, 10, 0.5)
    assert only_epochs.epochs == 2 and only_epochs.pretrain_epochs == 6  # masked-LM still sized by the budget
    pretrained = plan_budget(auto(), False, 200, 10, 0.5)
    assert pretrained.pretrain_epochs == 0 and pretrained.epochs == 4  # at most 4 from pretrained weights
    tiny = plan_budget(auto(time_budget=1), True, 2000, 10, 0.5)
    assert (tiny.pretrain_epochs, tiny.epochs) == (1, 1)  # never below one epoch each
    huge = plan_budget(auto(time_budget=600), True, 10, 1, 0.01)
    assert (huge.pretrain_epochs, huge.epochs) == (MAX_PRETRAIN_EPOCHS, MAX_SCRATCH_EPOCHS)


def test_the_recipe_fills_in_what_was_left_auto_and_no_budget_means_the_plain_defaults():
    plan = plan_budget(auto(), True, 200, 10, 0.5)
    resolved = apply_plan(auto(), plan, scratch=True)
    assert resolved.stages() == (plan.epochs, 8, 0.99)
    assert apply_plan(auto(ema_decay=0.5, patience=2), plan, True).stages() == (plan.epochs, 2, 0.5)
    assert apply_plan(auto(), plan, scratch=False).ema_decay == 0.0
    plain = without_budget(auto(time_budget=0))
    assert plain.stages() == (4, 3, 0.0) and plain.pretrain_epochs == 0
    with pytest.raises(Exception, match="still 'auto'"):
        auto().stages()


@pytest.mark.slow
def test_a_default_run_sizes_its_stages_records_them_and_keeps_to_its_budget(small_csv, tmp_path):
    from training.finetune import train

    cfg = tiny_train_config(tmp_path / "run", small_csv, time_budget=0.25, epochs=None, max_seq_len=None)
    started = time.perf_counter()
    metrics = train(cfg)
    took = time.perf_counter() - started
    plan = metrics["time_budget"]
    assert plan["budget_seconds"] == 15 and plan["seconds_per_step"] > 0
    assert plan["pretrain_epochs"] >= 1 and plan["epochs"] >= 1 and metrics["pretrain"]["samples"] > 0
    recorded = json.loads((tmp_path / "run" / "best" / "training_config.json").read_text())
    assert recorded["epochs"] == plan["epochs"] and recorded["pretrain_epochs"] == plan["pretrain_epochs"]
    assert recorded["ema_decay"] == 0.99 and recorded["patience"] == 8 and recorded["max_seq_len"] >= 32
    assert took < 15 * 1.15 + 20  # the budget's backstop, plus loading, the baseline and the test evaluation


def test_fine_tuning_stops_with_a_last_evaluation_once_the_budget_is_spent(small_csv, tmp_path):
    from training.batching import encode
    from training.finetune import load_splits
    from training.loop import fit
    from training.modeling import build_model, parse_base_model

    cfg = tiny_train_config(tmp_path / "run", small_csv, epochs=5, ema_decay=0.0, patience=100)
    cfg = without_budget(cfg)
    splits, label_map, _ = load_splits(cfg)
    model, tokenizer = build_model(
        parse_base_model(cfg.base_model), len(label_map), [e.text for e in splits.train], 32, 800, 0.1, 0.0
    )
    train_data, dev_data = encode(splits.train, tokenizer, label_map), encode(splits.dev, tokenizer, label_map)
    saved = []
    result = fit(model, tokenizer, label_map, train_data, dev_data, cfg, 1e-3, saved.append, stop_at=0.0)
    assert result.steps == 1 and len(result.history) == 1 and len(saved) == 1


def test_fine_tuning_is_replanned_in_steps_from_the_time_masked_lm_actually_left():
    from training.budget import replan_fine_tuning

    plan = plan_budget(auto(), True, 200, 10, 0.5)
    assert plan.epochs == 4
    ft_epoch_s = 100 * (1 + 10 / 100 / 3)
    later = replan_fine_tuning(auto(), plan, True, seconds_left=1200 * RESERVED_SHARE + 2.5 * ft_epoch_s)
    assert (later.epochs, later.fine_tune_steps) == (3, 500)  # 2.5 epochs: the schedule ends with the budget
    assert replan_fine_tuning(auto(), plan, True, seconds_left=0).epochs == 1  # never less than one epoch
    plenty = replan_fine_tuning(auto(), plan, True, seconds_left=10_000)
    assert (plenty.epochs, plenty.fine_tune_steps) == (MAX_SCRATCH_EPOCHS, 0)
    explicit = plan_budget(auto(epochs=3), True, 200, 10, 0.5)
    assert replan_fine_tuning(auto(epochs=3), explicit, True, seconds_left=0).epochs == 3  # --epochs wins


def test_masked_lm_stops_at_its_deadline(small_csv):
    import numpy as np

    from training.data import load_examples
    from training.modeling import build_model, parse_base_model
    from training.pretrain import PretrainConfig, pretrain_mlm

    examples, _ = load_examples(str(small_csv), None, None)
    texts = [e.text for e in examples]
    model, tokenizer = build_model(parse_base_model("scratch:pico"), 2, texts, 32, 500, 0.1, 0.0)
    ids = tokenizer.encode_ids(texts)
    stopped = pretrain_mlm(model.config, tokenizer, ids, PretrainConfig(epochs=3, progress=False, stop_at=0.0))
    assert stopped["samples"] == 0
    ran = pretrain_mlm(model.config, tokenizer, ids, PretrainConfig(epochs=1, progress=False))
    assert ran["samples"] == len(ids) and np.isfinite(ran["final_loss"])


def test_masked_lm_is_sized_by_its_own_measured_step_time():
    same = plan_budget(auto(), True, 200, 10, 0.5)
    slower = plan_budget(auto(), True, 200, 10, 0.5, mlm_step_s=1.0)
    assert slower.pretrain_epochs == round(same.pretrain_epochs / 2)  # 6 -> 3: a masked-LM step costs twice
    assert slower.estimated_seconds <= 20 * 60 and slower.mlm_seconds_per_step == 1.0


def test_the_probe_times_batches_from_the_shortest_to_the_longest_and_interpolates_the_rest():
    from training.budget import PROBE_STEPS, UPDATE_OVERHEAD, average_step_seconds, probe_batches

    ids = [[0] * n for n in [5] * 300 + [200] * 20]  # mostly short, a few long: the long ones dominate an epoch
    probe = probe_batches(ids, 32)
    size = [len(b) * max(len(ids[i]) for i in b) for b in probe.timed]
    lengths = [max(len(ids[i]) for i in b) for b in probe.timed]
    assert lengths[0] == 5 and lengths[-1] == 200 and len(probe.timed) <= PROBE_STEPS
    assert sum(probe.batch_tokens) == 300 * 5 + 20 * 200 + 12 * (200 - 5)  # one bucket mixes 12 short with 20 long
    # a cost per token that grows with the width (attention): interpolation follows it, batch by batch
    texts = [len(b) for b in probe.timed]
    cost = [n * (1 + w / 100) / 1000 for n, w in zip(size, lengths, strict=True)]
    widths = np.array(probe.batch_tokens) / np.array(probe.batch_texts)
    expected = np.array(probe.batch_tokens) * (1 + widths / 100) / 1000  # exact: linear in the width
    got = average_step_seconds(probe, list(zip(cost, size, texts, strict=True)))
    assert abs(got - expected.mean() * UPDATE_OVERHEAD) < 1e-9


def test_a_stage_the_user_sized_keeps_its_size_and_the_other_gets_what_is_left():
    ft_epoch_s = 100 * (1 + 10 / 100 / 3)
    usable = 20 * 60 * (1 - RESERVED_SHARE)
    fixed = plan_budget(auto(epochs=6), True, 200, 10, 0.5)
    assert fixed.epochs == 6 and fixed.pretrain_epochs == round((usable - 6 * ft_epoch_s) / 100)  # what is left
    crowded = plan_budget(auto(epochs=20), True, 200, 10, 0.5)
    assert crowded.epochs == 20 and crowded.pretrain_epochs == 0  # nothing left: no masked-LM, not a negative
    smoke = plan_budget(auto(max_steps=10), True, 200, 10, 0.5)
    assert smoke.pretrain_epochs == 0  # a --max-steps run gets no masked-LM unless asked for


def test_the_robustness_options_count_as_extra_passes_and_bad_budgets_are_refused():
    from ernie_cls.errors import ConfigError
    from training.budget import robustness_passes

    assert robustness_passes(auto()) == 1
    assert robustness_passes(auto(adversarial="fgm", rdrop_alpha=1.0)) == 3
    assert robustness_passes(auto(noise_consistency=1.0)) == 2
    for bad in (float("inf"), float("nan"), -1.0):
        with pytest.raises(ConfigError, match="--time-budget"):
            auto(time_budget=bad).validate()
