"""Robustness options and distillation: the noise functions do what they say; each training option runs, changes
the training, and is recorded in the checkpoint's config."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from ernie_cls.artifact import verify_artifact
from ernie_cls.errors import ConfigError
from ernie_cls.tokenization import normalize_text
from release.verify import VerifyConfig, labelled_data
from tests.conftest import tiny_train_config, waimai_rows
from training.noise import NOISE_KINDS, HomophoneTable, noisy

TEXT = "送餐很快，味道很好，下次还点！ABC 123"


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_each_noise_kind_changes_texts_at_its_rate_and_is_deterministic(kind):
    table = HomophoneTable.from_texts([r["review"] for r in waimai_rows(300)])  # a real corpus: real homophones
    out = [noisy(TEXT, kind, 0.3, random.Random(s), table) for s in range(50)]
    assert sum(o != TEXT for o in out) > 25  # at 30 % per character nearly every text changes
    assert out == [noisy(TEXT, kind, 0.3, random.Random(s), table) for s in range(50)]
    assert all(o for o in out)
    if kind == "delete":
        assert all(len(o) <= len(TEXT) for o in out)
    if kind in ("duplicate", "insert"):
        assert all(len(o) >= len(TEXT) for o in out)


def test_width_noise_is_undone_by_the_normalisation_training_and_serving_share():
    noisy_text = noisy(TEXT, "width", 1.0, random.Random(0))
    assert noisy_text != TEXT and normalize_text(noisy_text) == normalize_text(TEXT)


def test_homophones_keep_the_pinyin():
    from pypinyin import lazy_pinyin

    table = HomophoneTable.from_texts(["在再在再做作坐座"], min_count=1)
    for ch in "在再做作坐座":
        sub = table.substitute(ch, random.Random(1))
        assert sub != ch and lazy_pinyin(sub) == lazy_pinyin(ch)


@pytest.mark.parametrize(
    "options",
    [
        {"label_smoothing": 0.1},
        {"adversarial": "fgm", "adv_epsilon": 0.5},
        {"noise_augment": 0.5, "noise_rate": 0.2},
        {"rdrop_alpha": 1.0},
        {"noise_consistency": 1.0, "noise_rate": 0.2},
    ],
)
def test_robustness_options_train_and_are_recorded(options, small_csv, tmp_path):
    from training.finetune import train

    metrics = train(tiny_train_config(tmp_path / "run", small_csv, max_steps=6, eval_every=3, **options))
    assert all(h["loss"] == h["loss"] for h in metrics["history"])  # finite (not NaN)
    saved = json.loads((tmp_path / "run" / "best" / "training_config.json").read_text())
    assert all(saved[k] == v for k, v in options.items())


def test_fgm_restores_the_embeddings_it_perturbs(small_csv, tmp_path, monkeypatch):
    """After the adversarial pass the optimiser must see the original weights (only gradients accumulate)."""
    import numpy as np

    from training import robust

    seen = {}
    original = robust.RobustTraining.adversarial_step

    def spy(self, train_model, labels, ids, types):
        weight = self.model.ernie.embeddings.word_embeddings.weight
        before = weight.numpy().copy()
        original(self, train_model, labels, ids, types)
        seen["restored"] = np.array_equal(before, weight.numpy())

    monkeypatch.setattr(robust.RobustTraining, "adversarial_step", spy)
    from training.finetune import train

    train(tiny_train_config(tmp_path / "run", small_csv, max_steps=2, adversarial="fgm"))
    assert seen["restored"] is True


def test_distillation_learns_from_a_teacher_and_refuses_a_mismatched_one(trained_run, small_csv, tmp_path):
    from ernie_cls.errors import ConfigError
    from training.data import LabelMap
    from training.finetune import teacher_logits, train

    metrics = train(tiny_train_config(tmp_path / "student", small_csv, max_steps=4, teacher=str(trained_run / "best")))
    assert metrics["steps"] == 4
    soft = teacher_logits(str(trained_run / "best"), LabelMap(["0", "1"]), ["好吃", "难吃"])
    assert soft.shape == (2, 2)
    with pytest.raises(ConfigError, match="same labels"):
        teacher_logits(str(trained_run / "best"), LabelMap(["a", "b", "c"]), ["好吃"])


def test_the_tfidf_baseline_can_be_the_teacher(small_csv, tmp_path, monkeypatch):
    from training import finetune

    seen = {}
    real_fit = finetune.fit

    def spy(model, tokenizer, label_map, train_data, *args, **kwargs):
        seen["teacher"] = train_data.teacher_logits
        seen["labels"] = train_data.labels
        return real_fit(model, tokenizer, label_map, train_data, *args, **kwargs)

    monkeypatch.setattr(finetune, "fit", spy)
    metrics = finetune.train(tiny_train_config(tmp_path / "student", small_csv, max_steps=2, teacher="tfidf"))
    assert metrics["steps"] == 2
    assert seen["teacher"].shape == (len(seen["labels"]), 2)
    assert (seen["teacher"].argmax(1) == seen["labels"]).mean() > 0.6  # the small set is easy for n-grams


def test_noise_consistency_pass_sees_a_noisy_copy_of_every_text(small_csv, tmp_path):
    """The consistency term compares each text with a noisy copy of itself: same batch, other token ids."""
    from training.batching import encode
    from training.finetune import load_splits
    from training.robust import RobustTraining

    cfg = tiny_train_config(tmp_path / "run", small_csv, noise_consistency=1.0, noise_rate=0.3)
    splits, label_map, _ = load_splits(cfg)
    from ernie_cls.tokenization import ErnieTokenizerFast, build_vocab

    tokenizer = ErnieTokenizerFast(build_vocab([e.text for e in splits.train], vocab_size=500))
    data = encode(splits.train, tokenizer, label_map)
    robust = RobustTraining(cfg, None, tokenizer, data, random.Random(0), use_amp=False)
    batch = list(range(16))
    clean, copy = robust.batch_ids(batch), robust.noisy_copy(batch)
    assert len(copy) == len(clean) == 16
    assert sum(a != b for a, b in zip(clean, copy, strict=True)) >= 12  # at 30 % nearly every text changes


def test_full_distillation_keeps_the_consistency_term_and_drops_only_the_label_loss(small_csv, tmp_path):
    """QAT runs with distill_alpha 1 and inherits R-Drop: the mix must weigh the label loss only."""
    import paddle
    import paddle.nn.functional as F  # noqa: N812

    from training.batching import Encoded
    from training.robust import RobustTraining

    cfg = tiny_train_config(tmp_path / "run", small_csv, rdrop_alpha=1.0, distill_alpha=1.0, distill_temperature=1.0)
    teacher = np.array([[2.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    data = Encoded([[1, 5, 2], [1, 6, 2]], np.array([0, 1]), ["a", "b"], teacher_logits=teacher)
    robust = RobustTraining(cfg, None, None, data, random.Random(0), use_amp=False)
    first, second = paddle.to_tensor([[1.0, 0.5], [0.2, 0.1]]), paddle.to_tensor([[0.0, 1.0], [1.0, 0.0]])
    loss = float(robust.loss(lambda *a, **k: second, first, paddle.to_tensor([0, 1]), [0, 1], None, None))
    lp1, lp2 = F.log_softmax(first, -1).numpy(), F.log_softmax(second, -1).numpy()
    soft = np.exp(teacher) / np.exp(teacher).sum(1, keepdims=True)
    distill = float((soft * (np.log(soft) - lp1)).sum() / 2)
    symmetric_kl = float((np.exp(lp2) * (lp2 - lp1)).sum() + (np.exp(lp1) * (lp1 - lp2)).sum())
    assert loss == pytest.approx(distill + symmetric_kl / 4, rel=1e-5)  # / (2 x batch of 2); no cross-entropy
    assert robust.label_weight() == 0.0


def test_noise_draws_are_independent_reproducible_and_draw_0_is_the_historical_one():
    from bench.robustness import noisy_texts

    texts = [r["review"] for r in waimai_rows(40)]
    table = HomophoneTable.from_texts(texts)
    first, second = (noisy_texts(texts, "mixed", 0.2, 0, d, table) for d in (0, 1))
    assert first != second and first == noisy_texts(texts, "mixed", 0.2, 0, 0, table)
    historical = [noisy(t, "mixed", 0.2, random.Random(f"0-mixed-0.2-{i}"), table) for i, t in enumerate(texts)]
    assert first == historical  # figures measured before --draws existed still reproduce
    assert noisy_texts(texts, "clean", 0.0, 0, 3, table) == texts


def test_bench_robustness_measures_every_condition_and_judges_plain_against_robust(int8_artifact, small_csv, tmp_path):
    from bench.robustness import RobustnessConfig, run_robustness

    cfg = RobustnessConfig(
        artifacts={"plain": str(int8_artifact), "robust": str(int8_artifact)},
        data=str(small_csv), kinds=["width", "mixed"], rates=[0.1, 0.5], draws=2, output=str(tmp_path / "rob.json"),
    )  # fmt: skip
    report = run_robustness(cfg)
    rows = {(r["model"], r["format"], r["noise"], r["rate"]): r for r in report["rows"]}
    assert len(rows) == 2 * 2 * (1 + 2 * 2)  # models x formats x (clean + kinds x rates)
    for (model, fmt, noise, _rate), row in rows.items():
        assert len(row["draws"]) == (1 if noise == "clean" else 2)
        assert row["accuracy"] == pytest.approx(sum(row["draws"]) / len(row["draws"]))
        clean = rows[(model, fmt, "clean", 0.0)]["accuracy"]
        if noise == "width":  # undone by the shared normalisation
            assert row["accuracy"] == clean
    for target in report["targets"].values():  # the same model on both sides: no cost, the same drop
        assert target["clean_cost_pt"] == 0
        assert target["drop_ratio"] in (1.0, None)
    assert (tmp_path / "rob.md").read_text().count("\n") == 2 + 5 and (tmp_path / "rob.png").stat().st_size > 0
    evaluated_on = report["data"]["evaluated_on"]  # which rows each model was scored on, as labelled_data chose them
    expected = labelled_data(VerifyConfig(str(int8_artifact), str(small_csv)), verify_artifact(int8_artifact))
    assert evaluated_on["plain"] == evaluated_on["robust"]
    assert evaluated_on["plain"]["split"] == expected["split"]
    assert evaluated_on["plain"]["examples"] == len(expected["texts"])

    with pytest.raises(ConfigError, match="unknown noise kind"):
        run_robustness(RobustnessConfig(artifacts={"a": str(int8_artifact)}, kinds=["typo"]))


def test_bench_robustness_judges_no_target_when_the_models_were_scored_on_different_texts(
    int8_artifact, small_csv, tmp_path, monkeypatch
):
    import bench.robustness
    from bench.robustness import RobustnessConfig, run_robustness

    real = bench.robustness.labelled_data
    calls = []

    def held_out_differently(cfg, artifact):  # the second model's split leaves out one more row
        data = real(cfg, artifact)
        calls.append(cfg)
        return data if len(calls) == 1 else {**data, "texts": data["texts"][1:], "labels": data["labels"][1:]}

    monkeypatch.setattr(bench.robustness, "labelled_data", held_out_differently)
    cfg = RobustnessConfig(
        artifacts={"plain": str(int8_artifact), "robust": str(int8_artifact)},
        data=str(small_csv), kinds=["mixed"], rates=[0.1], output=str(tmp_path / "rob.json"),
    )  # fmt: skip
    report = run_robustness(cfg)
    assert len(report["rows"]) == 2 * 2 * 2  # still measured and tabulated...
    assert report["targets"] == {}  # ...but not judged as a pair
    assert len({e["texts_sha256"] for e in report["data"]["evaluated_on"].values()}) == 2
