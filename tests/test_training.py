"""Fine-tuning on tiny models: it learns, it is reproducible, checkpoints round-trip, outputs are protected."""

from __future__ import annotations

import json
import random
import socket
import time

import numpy as np
import pytest

from ernie_cls.errors import ConfigError, ModelLoadError, OutputExistsError
from tests.conftest import tiny_train_config, waimai_rows, write_csv
from training.batching import length_bucketed_batches
from training.checkpoint import BEST_DIR
from training.finetune import train
from training.modeling import load_checkpoint, parse_base_model


def test_training_overfits_64_examples(tmp_path):
    """A model that can learn drives training error to zero on a handful of examples."""
    from training.batching import encode
    from training.data import load_examples
    from training.loop import evaluate_encoded

    data = write_csv(tmp_path / "64.csv", waimai_rows(32))
    cfg = tiny_train_config(
        tmp_path / "run",
        None,
        train_file=str(data),
        dev_file=str(data),
        epochs=25,
        batch_size=16,
        warmup_ratio=0.0,
        dropout=0.0,
        patience=100,
    )
    train(cfg)
    model, tok, label_map = load_checkpoint(tmp_path / "run" / BEST_DIR)
    examples, _ = load_examples(data)
    assert evaluate_encoded(model, tok, encode(examples, tok, label_map), label_map)["accuracy"] == 1.0


def test_checkpoint_holds_everything_needed_to_reload_it(trained_run):
    best = trained_run / BEST_DIR
    for name in (
        "config.json",
        "vocab.txt",
        "tokenizer.json",
        "tokenizer_config.json",
        "ernie_cls_tokenizer.json",
        "label_map.json",
        "training_config.json",
        "metrics.json",
    ):
        assert (best / name).is_file(), name
    metrics = json.loads((trained_run / "metrics.json").read_text())
    for split in ("dev", "test"):
        m = metrics[split]
        assert set(m) >= {"accuracy", "macro_f1", "per_class", "confusion_matrix"}
        assert sum(map(sum, m["confusion_matrix"]["rows_true_cols_pred"])) == m["n"]
    assert set(metrics["dev"]["per_class"]) == {"negative", "positive"}
    assert metrics["train_samples_per_second"] > 0


def test_training_from_a_saved_checkpoint_directory(trained_run, small_csv, tmp_path):
    """`--base-model <dir>` goes through paddlenlp's from_pretrained of a directory, with its own tokenizer."""
    source = parse_base_model(str(trained_run / BEST_DIR))
    assert source.kind == "directory"
    train(tiny_train_config(tmp_path / "again", small_csv, base_model=str(trained_run / BEST_DIR), epochs=1))
    first = (trained_run / BEST_DIR / "vocab.txt").read_text()
    assert (tmp_path / "again" / BEST_DIR / "vocab.txt").read_text() == first


def test_same_seed_same_metrics(small_csv, tmp_path):
    a = train(tiny_train_config(tmp_path / "a", small_csv, epochs=1))
    b = train(tiny_train_config(tmp_path / "b", small_csv, epochs=1))
    c = train(tiny_train_config(tmp_path / "c", small_csv, epochs=1, seed=7))
    assert a["dev"] == b["dev"] and a["test"] == b["test"]
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    assert [h["loss"] for h in a["history"]] != [h["loss"] for h in c["history"]]


def test_existing_output_is_refused_without_overwrite(trained_run, small_csv):
    with pytest.raises(OutputExistsError, match="already exists") as err:
        train(tiny_train_config(trained_run, small_csv))
    assert "--overwrite" in err.value.hint


def test_crash_mid_training_keeps_the_last_good_checkpoint(small_csv, tmp_path, monkeypatch):
    from ernie_cls.tokenization import ErnieTokenizerFast

    out = tmp_path / "run"
    train(tiny_train_config(out, small_csv, epochs=1))
    before = (out / BEST_DIR / "model_state.pdparams").read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("power cut while saving")

    monkeypatch.setattr(ErnieTokenizerFast, "save", crash)  # dies half-way through writing the new best
    with pytest.raises(KeyboardInterrupt):
        train(tiny_train_config(out, small_csv, epochs=1, overwrite=True, seed=3))
    assert (out / BEST_DIR / "model_state.pdparams").read_bytes() == before
    load_checkpoint(out / BEST_DIR)  # still complete and loadable


def test_hub_name_offline_fails_fast_with_instructions(monkeypatch):
    from training.modeling import build_model

    def unreachable(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match="unreachable") as err:
        build_model(parse_base_model("ernie-3.0-mini-zh"), 2, ["好"], 32)
    assert time.perf_counter() - start < 5
    assert "--base-model" in err.value.hint and "scratch:nano" in err.value.hint


def test_unknown_names_and_paths_are_explained():
    with pytest.raises(ConfigError, match="Unknown scratch size"):
        parse_base_model("scratch:huge")
    with pytest.raises(ConfigError, match="no such directory"):
        parse_base_model("./missing/ckpt")
    from training.modeling import _hub_known

    with pytest.raises(ConfigError, match="neither a directory") as err:
        _hub_known("ernie-9.9-zh")
    assert "ernie-3.0-mini-zh" in err.value.hint


def test_checkpoint_without_label_map_is_refused(trained_run, tmp_path):
    import shutil

    broken = tmp_path / "ckpt"
    shutil.copytree(trained_run / BEST_DIR, broken)
    (broken / "label_map.json").unlink()
    with pytest.raises(ModelLoadError, match=r"no label_map\.json"):
        load_checkpoint(broken)


def test_config_errors_say_how_to_fix(tmp_path):
    from training.config import TrainConfig

    with pytest.raises(ConfigError, match="No training data") as err:
        TrainConfig(output=str(tmp_path)).validate()
    assert "--data" in err.value.hint
    with pytest.raises(ConfigError, match="--dev-file"):
        TrainConfig(output=str(tmp_path), train_file="a.csv").validate()


def test_length_buckets_cover_every_example_once_and_pad_little():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 130, size=1000).tolist()
    batches = length_bucketed_batches(lengths, 32, random.Random(0))
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(1000)) and max(map(len, batches)) == 32
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded / sum(lengths) < 1.1


def test_every_run_is_compared_with_the_tfidf_baseline_on_the_same_rows(trained_run, int8_artifact):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    base, result = metrics["baseline"], metrics["baseline_verdict"]
    assert base["split"] == "test" and base["trained_on"] == "train+dev" and base["n"] == metrics["test"]["n"]
    assert 0 < base["accuracy"] <= 1 and base["seconds"] < 30
    ours = metrics["test"]
    assert result["beats_baseline"] == (ours["accuracy"] > base["accuracy"] and ours["macro_f1"] > base["macro_f1"])
    card = (int8_artifact / "MODEL_CARD.md").read_text()
    assert "## Against a baseline" in card and f"{base['accuracy'] * 100:.2f} %" in card


def test_not_beating_the_baseline_warns_with_both_scores_and_what_to_do(caplog):
    from training import baseline

    base = {"split": "test", "accuracy": 0.85, "macro_f1": 0.75}
    worse = {"test": {"accuracy": 0.80, "macro_f1": 0.70}}
    result = baseline.verdict(worse, base)
    assert result == {"split": "test", "accuracy": False, "macro_f1": False, "beats_baseline": False}
    with caplog.at_level("WARNING", logger="training.baseline"):
        baseline.warn_if_not_beaten(worse, base, result)
    assert "80.00 % vs 85.00 %" in caplog.text and "pretrained weights" in caplog.text
    assert not baseline.verdict({"test": {"accuracy": 0.9, "macro_f1": 0.7}}, base)["beats_baseline"]  # both needed
    better = {"test": {"accuracy": 0.9, "macro_f1": 0.8}}
    caplog.clear()
    baseline.warn_if_not_beaten(better, base, baseline.verdict(better, base))
    assert caplog.text == ""


def test_baseline_macro_f1_averages_every_training_label_like_the_models_metrics():
    from training.baseline import fit_and_score
    from training.data import Example

    train = [Example(t * 3, label) for t, label in (("好", "a"), ("差", "b"), ("中", "c")) for _ in range(5)]
    evaluate = [Example("好好好", "a"), Example("差差差", "b")]  # label c absent: counts 0, as in the model's metrics
    scores = fit_and_score(train, evaluate)
    assert scores["accuracy"] == 1.0 and scores["macro_f1"] == pytest.approx(2 / 3)


def test_the_baseline_teacher_scores_each_training_text_without_having_seen_it(caplog):
    from training.baseline import out_of_fold_logits
    from training.data import Example

    train = [Example(f"{c * 3}{i}", label) for c, label in (("好", "a"), ("差", "b")) for i in range(10)]
    train.append(Example("好好好x", "b"))  # mislabelled; only its "x" says b, and no other text has an "x"
    logits = out_of_fold_logits(train, ["b", "a"])  # columns in the order asked, not scikit-learn's
    assert logits.shape == (21, 2)
    assert (logits[:10].argmax(1) == 1).all() and (logits[10:20].argmax(1) == 0).all()
    # In-sample, C=10 memorises "x" -> b; out of fold the scorer never saw "x" and says what the pattern says: a.
    assert logits[20].argmax() == 1
    # A one-row class: its row is scored by a model that never saw the class (so not "c"), the rest still out of fold.
    with_single = out_of_fold_logits([*train, Example("中", "c")], ["a", "b", "c"])
    assert with_single[-1].argmax() != 2 and with_single[20].argmax() == 0
    with caplog.at_level("WARNING", logger="training.baseline"):
        nothing = out_of_fold_logits([Example("好", "a"), Example("差", "b")], ["a", "b"])
    assert "uniform" in caplog.text and "Drop --teacher tfidf" in caplog.text and np.allclose(nothing, np.log(0.5))


def test_the_model_card_lists_formats_against_the_baseline_only_on_the_same_rows():
    from release.export import _baseline_section

    base = {"model": "m", "split": "test", "trained_on": "train+dev", "accuracy": 0.8, "macro_f1": 0.7, "n": 4}
    metrics = {
        "onnx-int8": {"test_accuracy": 0.9, "test_macro_f1": 0.8, "n_test": 4},
        "training": {"test": {"accuracy": 0.9, "macro_f1": 0.8}, "baseline": {**base, "rows_sha256": "abc"},
                     "baseline_verdict": {"beats_baseline": True}},
    }  # fmt: skip
    assert "onnx-int8: 90.00 %" in _baseline_section({**metrics, "test_rows_sha256": "abc"})
    assert "onnx-int8" not in _baseline_section({**metrics, "test_rows_sha256": "other rows, same count"})


def test_balanced_class_weights_make_every_class_weigh_the_same_in_total(small_csv, tmp_path):
    import numpy as np

    from training.finetune import train
    from training.robust import balanced_weights

    labels = np.array([0] * 6 + [1] * 2 + [2] * 1)
    weights = balanced_weights(labels)
    totals = [weights[k] * (labels == k).sum() for k in range(3)]
    assert np.allclose(totals, totals[0]) and weights[2] > weights[1] > weights[0]
    metrics = train(tiny_train_config(tmp_path / "run", small_csv, epochs=1, class_weights="balanced"))
    assert (
        metrics["test"]["accuracy"] > 0
        and json.loads((tmp_path / "run" / "best" / "training_config.json").read_text())["class_weights"] == "balanced"
    )
