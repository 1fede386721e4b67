"""The n-gram branch (training/ngrams.py, training/ngram_model.py): the graph hashes exactly what training fitted,
at the vocabulary's limit and through ONNX; the fit, the weight choice and its privacy bound; and a checkpoint with
the branch through QAT and export."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.conftest import corrupt_onnx_exports
from training import ngrams

PAD, CLS, SEP = 0, 1, 2
SPECIAL = (PAD, CLS, SEP)


UNK = 3


def random_ids(rng: np.random.Generator, vocab: int, rows: int, width: int) -> list[list[int]]:
    """Texts as ids with [CLS]/[SEP] around, ids biased to the top of the vocabulary (where int32 overflow would
    bite), and a stray special token ([PAD], [CLS], [SEP]) or [UNK] inside some texts."""
    out = []
    for _ in range(rows):
        body = rng.integers(max(4, vocab - 50), vocab, size=rng.integers(0, width)).tolist()
        if body and rng.random() < 0.5:
            body[rng.integers(len(body))] = int(rng.choice([PAD, CLS, SEP, UNK]))
        out.append([CLS, *body, SEP])
    return out


def pico_with_ngrams(vocab: int, classes: int, rng: np.random.Generator, weight: float = 0.5):
    from paddlenlp.transformers import ErnieConfig, ErnieForSequenceClassification

    from training.modeling import _ERNIE3_COMMON, SCRATCH_PRESETS
    from training.ngram_model import with_ngrams

    config = ErnieConfig(**_ERNIE3_COMMON, **SCRATCH_PRESETS["pico"], vocab_size=vocab, num_labels=classes)
    base = ErnieForSequenceClassification(config)
    base.eval()
    rows = vocab + 2 * ngrams.BUCKETS
    head = ngrams.NgramHead(
        rng.normal(size=(rows, classes)).astype(np.float32),
        rng.normal(size=classes).astype(np.float32),
        vocab,
        ngrams.BUCKETS,
        SPECIAL,
        0.0,
    )
    return base, with_ngrams(base, head, weight), head


def padded(ids: list[list[int]]) -> np.ndarray:
    width = max(map(len, ids))
    return np.array([x + [PAD] * (width - len(x)) for x in ids], dtype=np.int64)


def test_graph_hashes_exactly_like_training_at_the_vocabulary_limit(tmp_path):
    """With the largest vocabulary the branch allows, token ids near its top, pads and stray [SEP]s: Paddle's graph
    and its ONNX export give the n-gram logits the numpy featuriser (what the linear model was fitted on) gives."""
    import onnx
    import paddle

    from release.export import export_onnx, export_paddle_inference, onnx_backend

    rng = np.random.default_rng(0)
    base, model, head = pico_with_ngrams(ngrams.MAX_VOCAB, 3, rng)
    ids = [*random_ids(rng, ngrams.MAX_VOCAB, 24, 40), [CLS, SEP], [CLS, ngrams.MAX_VOCAB - 1, SEP]]
    expected = head.logits(ids)
    x = padded(ids)
    got = model.ngram_logits(paddle.to_tensor(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)

    export_paddle_inference(model, tmp_path / "model")
    export_onnx(tmp_path / "model", tmp_path / "model.onnx")
    ops = {n.op_type for n in onnx.load(str(tmp_path / "model.onnx")).graph.node}
    assert "Mod" in ops and "Floor" not in ops  # integer hashing, not float division (inexact above 2**24)
    served = onnx_backend(tmp_path / "model.onnx").infer(x, np.zeros_like(x))
    types = paddle.to_tensor(np.zeros_like(x))
    transformer = base(paddle.to_tensor(x), token_type_ids=types).numpy()
    np.testing.assert_allclose(served, ngrams.blend(transformer, expected, 0.5), rtol=1e-4, atol=1e-4)
    session = onnx_backend(tmp_path / "model.onnx")
    for narrow in ([[CLS, SEP]], [[CLS]]):  # batches two and one token wide: no n-gram at all, the bias alone
        x = padded(narrow)
        np.testing.assert_allclose(model.ngram_logits(paddle.to_tensor(x)).numpy()[0], head.bias, atol=1e-6)
        transformer = base(paddle.to_tensor(x), token_type_ids=paddle.to_tensor(np.zeros_like(x))).numpy()
        blended = ngrams.blend(transformer, head.logits(narrow), 0.5)
        np.testing.assert_allclose(session.infer(x, np.zeros_like(x)), blended, rtol=1e-4, atol=1e-4)


def test_unblend_recovers_the_transformers_log_probabilities():
    rng = np.random.default_rng(4)
    transformer, ngram = rng.normal(size=(5, 3)) * 3, rng.normal(size=(5, 3)) * 3
    for w in (0.1, 0.5, 0.9):
        recovered = ngrams.unblend(ngrams.blend(transformer, ngram, w), ngram, w)
        np.testing.assert_allclose(recovered, ngrams.log_softmax(transformer), atol=1e-9)


def test_vocabularies_beyond_int32_hashing_and_single_class_rows_get_no_branch():
    ids = [[CLS, 5, 6, SEP]] * 4
    assert ngrams.fit_head(ids, np.array([0, 1, 0, 1]), 2, ngrams.MAX_VOCAB + 1, SPECIAL) is None
    assert ngrams.fit_head(ids, np.array([0, 0, 0, 0]), 2, 100, SPECIAL) is None


@pytest.mark.parametrize("classes", [2, 3])
def test_the_fitted_branch_is_the_logistic_regression_it_folds(classes):
    """The table and bias give the log-probabilities scikit-learn's model gives on held-out texts (the binary form's
    one decision folded into two columns, the idf folded into the rows), the branch learns n-grams seen often, and
    n-grams seen in fewer than MIN_TEXTS training texts get all-zero rows."""
    from scipy.special import log_softmax

    rng = np.random.default_rng(1)
    ids, labels = [], []
    for i in range(60 * classes):
        k = i % classes
        noise = rng.integers(40, 90, size=4).tolist()
        ids.append([CLS, *noise[:2], 10 + k, 20 + k, *noise[2:], SEP])
        labels.append(k)
    ids.append([CLS, 95, 96, 97, SEP])  # n-grams in one text only
    labels.append(0)
    head = ngrams.fit_head(ids, np.array(labels), classes, 100, SPECIAL)
    assert head is not None
    held_out = [[CLS, 10 + k, 20 + k, int(rng.integers(40, 90)), SEP] for k in range(classes)]
    x, column_weights = ngrams.training_matrix(ids, 100, SPECIAL)
    oracle = ngrams.linear_model().fit(x, np.array(labels))
    features = ngrams.ngram_features(held_out, 100, ngrams.BUCKETS, SPECIAL).multiply(column_weights).tocsr()
    expected = oracle.predict_log_proba(features)
    np.testing.assert_allclose(log_softmax(head.logits(held_out), -1), expected, atol=1e-4)
    assert head.logits(held_out).argmax(-1).tolist() == list(range(classes))
    rows, weights = ngrams.ngram_positions([[CLS, 95, 96, 97, SEP]], 100, ngrams.BUCKETS, SPECIAL)
    counted = rows[0][weights[0] > 0]
    assert len(counted) == 6  # 95, 96, 97, two bigrams, one trigram
    assert not head.table[counted].any()


def scored(rng, n: int, confidence: float, classes: int = 3) -> ngrams.Scored:
    """Rows whose n-gram logits favour the gold class by `confidence` (plus noise) and a transformer that is right
    on 80 % of them."""
    gold = rng.integers(0, classes, size=n)
    ngram = rng.normal(size=(n, classes))
    ngram[np.arange(n), gold] += confidence
    transformer = rng.normal(size=(n, classes))
    right = rng.random(n) < 0.8
    transformer[np.arange(n)[right], gold[right]] += 3
    return ngrams.Scored(transformer, ngram, gold)


def test_the_weight_is_chosen_on_dev_within_the_membership_bound():
    rng = np.random.default_rng(2)
    dev = scored(rng, 400, confidence=4.0)
    honest = scored(rng, 400, confidence=4.0)  # training rows scored like dev: nothing memorised
    weight, choice = ngrams.choose_weight(dev, honest)
    assert weight < 1.0  # the n-gram model is the better one on dev, and nothing is memorised
    memorised = scored(rng, 400, confidence=12.0)  # the branch is far surer on its training rows
    weight, choice = ngrams.choose_weight(dev, memorised)
    report = choice["by_weight"]
    assert all(report[str(w)]["membership_advantage"] > ngrams.ADVANTAGE_BOUND for w in ngrams.WEIGHTS if w < 1)
    assert weight == 1.0
    weight, choice = ngrams.choose_weight(scored(rng, 20, confidence=4.0), scored(rng, 20, confidence=4.0))
    assert choice["attack_noise_level"] > ngrams.ADVANTAGE_BOUND and weight == 1.0  # too few rows to show the bound


def test_macro_f1_is_scikit_learns():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(5)
    for classes, n in ((2, 7), (4, 50), (5, 3)):  # (5, 3): classes absent from gold or from predictions
        gold, pred = rng.integers(0, classes, n), rng.integers(0, classes, n)
        expected = f1_score(gold, pred, labels=list(range(classes)), average="macro", zero_division=0)
        assert ngrams.macro_f1(gold, pred, classes) == pytest.approx(expected, abs=1e-12)


def test_a_branch_whose_dev_gain_is_noise_is_left_out():
    """A branch that is as good as the transformer (it wins some dev rows and loses as many) is not added, while the
    same rows with a clearly better branch keep it."""
    rng = np.random.default_rng(4)
    dev = scored(rng, 600, confidence=4.0)
    dev.ngram = dev.transformer + rng.normal(size=dev.transformer.shape)  # a noisy copy of it
    members = ngrams.Scored(dev.transformer.copy(), dev.ngram.copy(), dev.gold.copy())
    weight, choice = ngrams.choose_weight(dev, members)
    best_share = max(ngrams.WEIGHTS[:-1], key=lambda w: choice["by_weight"][str(w)]["macro_f1"])
    assert choice["by_weight"][str(best_share)]["macro_f1"] > choice["by_weight"]["1.0"]["macro_f1"]  # won on dev
    assert weight == 1.0 and choice["gain_confidence"] < ngrams.GAIN_CONFIDENCE  # ...by noise
    better = scored(np.random.default_rng(4), 600, confidence=4.0)
    weight, choice = ngrams.choose_weight(better, ngrams.Scored(better.transformer, better.ngram, better.gold))
    assert weight < 1.0 and choice["gain_confidence"] >= ngrams.GAIN_CONFIDENCE


def test_gain_confidence_counts_strict_wins_and_the_rule_uses_its_threshold(monkeypatch):
    gold = np.array([0, 1] * 50)
    same = gold.copy()
    assert ngrams.gain_confidence(gold, same, same, 2) == 0.0  # ties count against the branch
    worse = gold.copy()
    worse[:20] = 1 - worse[:20]
    assert ngrams.gain_confidence(gold, gold, worse, 2) == 1.0 and ngrams.gain_confidence(gold, worse, gold, 2) == 0.0
    rng = np.random.default_rng(6)
    dev = scored(rng, 600, confidence=4.0)
    _, choice = ngrams.choose_weight(dev, ngrams.Scored(dev.transformer, dev.ngram, dev.gold))
    p = choice["gain_confidence"]
    assert 0 < p <= 1
    monkeypatch.setattr(ngrams, "GAIN_CONFIDENCE", p)  # exactly at the threshold: kept
    assert ngrams.choose_weight(dev, ngrams.Scored(dev.transformer, dev.ngram, dev.gold))[0] < 1.0
    monkeypatch.setattr(ngrams, "GAIN_CONFIDENCE", p + 1e-6)  # just above what dev shows: refused
    assert ngrams.choose_weight(dev, ngrams.Scored(dev.transformer, dev.ngram, dev.gold))[0] == 1.0


def test_a_branch_that_does_not_raise_a_memorising_transformers_advantage_is_allowed():
    """When the transformer alone is past the bound (it memorised), the branch may stay as long as the attack does
    not get stronger than against the transformer alone."""
    rng = np.random.default_rng(3)
    dev = scored(rng, 400, confidence=4.0)
    members = scored(rng, 400, confidence=4.0)
    members.transformer[np.arange(400), members.gold] += 6  # the transformer is far surer on its training rows
    weight, choice = ngrams.choose_weight(dev, members)
    report = choice["by_weight"]
    assert report["1.0"]["membership_advantage"] > ngrams.ADVANTAGE_BOUND
    assert weight < 1.0
    assert report[str(weight)]["membership_advantage"] <= report["1.0"]["membership_advantage"]


@pytest.fixture(scope="module")
def ngram_checkpoint(trained_run, tmp_path_factory):
    """The tiny trained model with a branch fitted on its own training split, at weight 0.5."""
    from training.checkpoint import BEST_DIR, save_checkpoint, saved_records
    from training.data import load_examples, stratified_split
    from training.modeling import load_checkpoint
    from training.ngram_model import with_ngrams

    best = trained_run / BEST_DIR
    model, tokenizer, label_map = load_checkpoint(best)
    config = json.loads((best / "training_config.json").read_text(encoding="utf-8"))
    examples, _ = load_examples(config["data"], None, None)
    train = stratified_split(examples, config["test_size"], config["dev_size"], config["seed"]).train
    ids = tokenizer.encode_ids([e.text for e in train], normalized=True)
    labels = np.array([label_map.labels.index(e.label) for e in train])
    special = (tokenizer.pad_id, tokenizer.cls_id, tokenizer.sep_id)
    head = ngrams.fit_head(ids, labels, len(label_map), int(model.config.vocab_size), special)
    assert head is not None
    out = tmp_path_factory.mktemp("ngram") / BEST_DIR
    save_checkpoint(with_ngrams(model, head, 0.5), tokenizer, label_map, saved_records(best), out)
    return out


def test_a_checkpoint_with_the_branch_goes_through_qat_export_and_verify(ngram_checkpoint, small_csv, tmp_path):
    """QAT keeps the branch (frozen, unquantised), export's parity and INT8 rules pass, the manifest says what the
    graph holds (the table's rows are an initializer of the served ONNX file), and `verify` passes its checks on
    the artifact (every format loaded and run as served, explanations included; the privacy bound is lifted: this
    fixture forces a share on 120 texts, where the branch memorises)."""
    import onnx

    from release.export import ExportConfig, export
    from training.modeling import load_checkpoint
    from training.qat import QATConfig, run_qat

    run_qat(QATConfig(checkpoint=str(ngram_checkpoint), output=str(tmp_path / "qat"), max_steps=3, progress=False))
    qat_model, _, _ = load_checkpoint(tmp_path / "qat" / "best")
    fp32_model, _, _ = load_checkpoint(ngram_checkpoint)
    np.testing.assert_array_equal(qat_model.ngram_table.numpy(), fp32_model.ngram_table.numpy())
    out = tmp_path / "artifact"
    manifest = export(
        ExportConfig(checkpoint=str(ngram_checkpoint), qat=str(tmp_path / "qat" / "best"), output=str(out))
    )
    assert all(c["passed"] for c in manifest["checks"].values())
    assert "transformer_alone_drop" in manifest["checks"]["int8_accuracy_drop"]
    transformer_only = manifest["checks"]["qat_vs_onnx_int8_transformer"]  # the transformer parts alone agree too
    assert transformer_only["argmax_agreement"] >= 0.99 and transformer_only["max_abs_logit_diff"] < 1.0
    branch = manifest["ngram_branch"]
    assert branch["transformer_weight"] == 0.5
    graph = onnx.load(str(out / manifest["formats"]["onnx-int8"]["path"])).graph
    shapes = [list(t.dims) for t in graph.initializer]
    assert [branch["table_rows"], len(manifest["labels"])] in shapes
    assert "n-gram branch: logits = 0.5 x" in (out / "MODEL_CARD.md").read_text(encoding="utf-8")
    from release.verify import VerifyConfig, run_verify

    report = run_verify(
        VerifyConfig(str(out), data=str(small_csv), output=str(tmp_path / "v"), explain=1, max_membership_advantage=1)
    )
    assert report["passed"], [c["problems"] for c in report["checks"]]
    graph_check = next(c for c in report["checks"] if c["name"].startswith("2 "))
    assert graph_check["details"]["onnx-int8"]["ngram_branch"] == {"claimed": True, "table": True, "mod_hashing": True}


def test_a_base_checkpoint_with_a_branch_starts_a_run_without_it(ngram_checkpoint):
    """--base-model <checkpoint with a branch>: the new run fine-tunes the transformer; the old branch's config keys
    do not follow (they would make its saved checkpoint load a table it never wrote)."""
    from paddlenlp.transformers import ErnieForSequenceClassification

    from training.modeling import ModelSource, build_model
    from training.ngram_model import ErnieWithNgrams

    model, _ = build_model(ModelSource("directory", str(ngram_checkpoint)), 2, [], 32)
    assert type(model) is ErnieForSequenceClassification and not isinstance(model, ErnieWithNgrams)
    assert not hasattr(model.config, "ngram_weight")


def test_train_writes_the_branch_into_best_when_dev_chooses_it(small_csv, tmp_path, monkeypatch):
    """The production path: `train` fits the branch, dev chooses a share (fixed here: the tiny dev split decides by
    noise), best/ is rewritten with it, and metrics.json's figures are the blended model's."""
    from tests.conftest import tiny_train_config
    from training.batching import encode
    from training.data import load_examples, stratified_split
    from training.finetune import train
    from training.loop import evaluate_encoded
    from training.modeling import load_checkpoint
    from training.ngram_model import ErnieWithNgrams, head_of

    real = ngrams.choose_weight
    monkeypatch.setattr(ngrams, "choose_weight", lambda dev, members: (0.5, real(dev, members)[1]))
    metrics = train(tiny_train_config(tmp_path / "run", small_csv))
    assert metrics["ngrams"]["in_model"] and metrics["ngrams"]["transformer_weight"] == 0.5
    model, tokenizer, label_map = load_checkpoint(tmp_path / "run" / "best")
    assert isinstance(model, ErnieWithNgrams) and model.config.ngram_weight == 0.5
    examples, _ = load_examples(str(small_csv), None, None)
    splits = stratified_split(examples, 0.2, 0.1, 42)
    recomputed = evaluate_encoded(model, tokenizer, encode(splits.test, tokenizer, label_map), label_map)
    assert recomputed["accuracy"] == metrics["test"]["accuracy"]
    # dev chose the share; the branch in best/ was then refitted on train+dev (there are test rows to judge it)
    train_rows, dev_rows = encode(splits.train, tokenizer, label_map), encode(splits.dev, tokenizer, label_map)
    special, vocab = (tokenizer.pad_id, tokenizer.cls_id, tokenizer.sep_id), int(model.config.vocab_size)
    both = ngrams.fit_head(
        train_rows.ids + dev_rows.ids, np.r_[train_rows.labels, dev_rows.labels], len(label_map), vocab, special
    )
    train_only = ngrams.fit_head(train_rows.ids, train_rows.labels, len(label_map), vocab, special)
    saved = head_of(model).table
    assert metrics["ngrams"]["fitted_on"] == "train+dev" and metrics["dev"]["note"].startswith("optimistic")
    assert np.array_equal(saved, both.table) and not np.array_equal(saved, train_only.table)


@pytest.fixture(scope="module")
def refit_run(small_csv, tmp_path_factory):
    """`train` on a copy of the small CSV with the share forced to 0.5: the branch refitted on train+dev."""
    from tests.conftest import tiny_train_config
    from training.finetune import train

    root = tmp_path_factory.mktemp("refit")
    data = root / "data.csv"
    shutil.copy(small_csv, data)
    real = ngrams.choose_weight
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ngrams, "choose_weight", lambda dev, members: (0.5, real(dev, members)[1]))
        train(tiny_train_config(root / "run", data))
    return root / "run" / "best", data


def test_export_fits_the_temperature_with_a_branch_that_never_saw_dev(refit_run, tmp_path, monkeypatch):
    """A branch refitted on train+dev has seen dev: export refits it on train alone for the temperature (the served
    model keeps the refitted one), and the manifest and model card say so."""
    import release.export
    from ernie_cls.calibration import fit_temperature
    from release.export import ExportConfig, export
    from training.batching import encode
    from training.data import load_examples, stratified_split
    from training.loop import predict_logits
    from training.modeling import load_checkpoint
    from training.ngram_model import head_of

    best, data = refit_run
    fitted_on: list[np.ndarray] = []  # what each format's temperature is fitted on
    monkeypatch.setattr(release.export, "fit_temperature", lambda x, y: fitted_on.append(x) or fit_temperature(x, y))
    manifest = export(ExportConfig(checkpoint=str(best), output=str(tmp_path / "artifact")))
    model, tokenizer, label_map = load_checkpoint(best)
    assert model.config.ngram_fitted_on == "train+dev"
    splits = stratified_split(load_examples(str(data), None, None)[0], 0.2, 0.1, 42)
    train_rows, dev = encode(splits.train, tokenizer, label_map), encode(splits.dev, tokenizer, label_map)
    served, outputs = head_of(model), predict_logits(model, tokenizer, dev.ids)
    held_out = ngrams.fit_head(train_rows.ids, train_rows.labels, len(label_map), served.vocab, served.special_ids)
    swapped = ngrams.swap_branch(outputs, served.logits(dev.ids), held_out.logits(dev.ids), 0.5)
    assert np.abs(swapped - outputs).max() > 0.01  # the branch refitted with dev differs on dev from the held-out one
    assert fitted_on and all(np.abs(x - swapped).max() < 1e-3 for x in fitted_on)
    branch = manifest["ngram_branch"]
    assert branch["fitted_on"] == "train+dev" and "refitted on train alone" in branch["temperature_fitted_with"]
    card = (tmp_path / "artifact" / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "fitted on train+dev; the temperature fitted on dev with the branch refitted on train alone" in card


def test_with_data_given_export_needs_no_held_out_branch(refit_run, small_csv, tmp_path):
    """--data rows were never seen by the branch: the temperature is fitted on them as served."""
    from release.export import ExportConfig, export

    best, _ = refit_run
    manifest = export(ExportConfig(checkpoint=str(best), output=str(tmp_path / "a"), data=str(small_csv)))
    assert manifest["ngram_branch"]["temperature_fitted_with"] == "the served model"


def test_export_refuses_to_refit_the_branch_on_changed_training_rows(refit_run, tmp_path):
    from ernie_cls.errors import ConfigError
    from release.export import ExportConfig, export

    best, data = refit_run
    original = data.read_bytes()
    try:
        changed = original.replace("好".encode(), "坏".encode(), 1)
        assert changed != original
        data.write_bytes(changed)
        with pytest.raises(ConfigError, match="changed since training") as refused:
            export(ExportConfig(checkpoint=str(best), output=str(tmp_path / "a")))
        assert "--data" in refused.value.hint and not (tmp_path / "a").exists()
    finally:
        data.write_bytes(original)


def _split_files_run_whose_branch_saw_dev(small_csv, tmp_path, monkeypatch) -> dict:
    """A --train-file/--dev-file/--test-file run whose n-gram branch is kept (share forced to 0.5), so refitted on
    train+dev; its metrics."""
    from tests.conftest import tiny_train_config
    from training.finetune import train

    for name in ("train", "dev", "test"):
        shutil.copy(small_csv, tmp_path / f"{name}.csv")
    real = ngrams.choose_weight
    monkeypatch.setattr(ngrams, "choose_weight", lambda dev, members: (0.5, real(dev, members)[1]))
    files = {f"{name}_file": str(tmp_path / f"{name}.csv") for name in ("train", "dev", "test")}
    return train(tiny_train_config(tmp_path / "run", None, **files))


def test_dev_does_not_stand_in_for_a_missing_test_file_once_the_branch_saw_it(small_csv, tmp_path, monkeypatch):
    from ernie_cls.errors import ConfigError
    from release.export import ExportConfig, export

    metrics = _split_files_run_whose_branch_saw_dev(small_csv, tmp_path, monkeypatch)
    assert metrics["ngrams"]["fitted_on"] == "train+dev"
    (tmp_path / "test.csv").unlink()
    with pytest.raises(ConfigError, match="dev cannot stand in"):
        export(ExportConfig(checkpoint=str(tmp_path / "run" / "best"), output=str(tmp_path / "a")))


def test_export_refuses_when_a_branch_that_saw_dev_has_lost_its_training_file(small_csv, tmp_path, monkeypatch):
    """The variant past the data-file check: a --train-file run whose dev and test files are still there."""
    from ernie_cls.errors import ConfigError
    from release.export import ExportConfig, export

    _split_files_run_whose_branch_saw_dev(small_csv, tmp_path, monkeypatch)
    (tmp_path / "train.csv").unlink()
    with pytest.raises(ConfigError, match="training rows are not at") as refused:
        export(ExportConfig(checkpoint=str(tmp_path / "run" / "best"), output=str(tmp_path / "a")))
    assert "train.csv" in refused.value.hint and not (tmp_path / "a").exists()


def test_without_test_rows_the_branch_stays_fitted_on_train(small_csv, tmp_path, monkeypatch):
    """With only train and dev, dev's figures are the only judge: the branch must not have seen dev."""
    from tests.conftest import tiny_train_config
    from training.finetune import train

    real = ngrams.choose_weight
    monkeypatch.setattr(ngrams, "choose_weight", lambda dev, members: (0.5, real(dev, members)[1]))
    from training.batching import encode
    from training.data import load_examples
    from training.modeling import load_checkpoint
    from training.ngram_model import head_of

    cfg = tiny_train_config(tmp_path / "run", None, train_file=str(small_csv), dev_file=str(small_csv))
    metrics = train(cfg)
    assert metrics["ngrams"]["fitted_on"] == "train" and "note" not in metrics["dev"]
    model, tokenizer, label_map = load_checkpoint(tmp_path / "run" / "best")
    rows = encode(load_examples(str(small_csv), None, None)[0], tokenizer, label_map)
    special = (tokenizer.pad_id, tokenizer.cls_id, tokenizer.sep_id)
    train_only = ngrams.fit_head(rows.ids, rows.labels, len(label_map), int(model.config.vocab_size), special)
    # dev = train here, so a refit would have doubled every row: a different table
    assert np.array_equal(head_of(model).table, train_only.table)


def test_a_failed_refit_keeps_the_branch_dev_chose(small_csv, tmp_path, monkeypatch):
    from tests.conftest import tiny_train_config
    from training.finetune import train

    real = ngrams.choose_weight
    monkeypatch.setattr(ngrams, "choose_weight", lambda dev, members: (0.5, real(dev, members)[1]))

    def out_of_memory(*_args):
        raise MemoryError("refit")

    monkeypatch.setattr(ngrams, "refit", out_of_memory)
    metrics = train(tiny_train_config(tmp_path / "run", small_csv))
    assert metrics["ngrams"]["in_model"] and metrics["ngrams"]["fitted_on"] == "train"


def test_verify_checks_the_manifests_branch_against_the_graph(ngram_checkpoint, trained_run, tmp_path):
    """verify's graph check: a branch claimed but absent, or present but not claimed, fails."""
    import onnx

    from release.export import export_onnx, export_paddle_inference
    from release.verify import Check, _check_ngram_branch
    from training.modeling import load_checkpoint

    graphs = {}
    for name, ckpt in (("branch", ngram_checkpoint), ("plain", trained_run / "best")):
        model, _, _ = load_checkpoint(ckpt)
        export_paddle_inference(model, tmp_path / name)
        export_onnx(tmp_path / name, tmp_path / f"{name}.onnx")
        graphs[name] = onnx.load(str(tmp_path / f"{name}.onnx")).graph
    rows = json.loads((ngram_checkpoint / "config.json").read_text())["vocab_size"] + 2 * ngrams.BUCKETS
    claimed = {"labels": {"0": "a", "1": "b"}, "ngram_branch": {"table_rows": rows}}
    unclaimed = {"labels": {"0": "a", "1": "b"}, "ngram_branch": None}
    for graph, manifest, ok in [
        (graphs["branch"], claimed, True),
        (graphs["plain"], unclaimed, True),
        (graphs["plain"], claimed, False),
        (graphs["branch"], unclaimed, False),
    ]:
        check = Check("2 weights/graph consistency")
        check.details["onnx"] = {}
        _check_ngram_branch(check, "onnx", graph, manifest)
        assert (check.status == "passed") == ok, (manifest, check.problems)


def test_export_refuses_a_qat_checkpoint_with_another_branch(ngram_checkpoint, trained_run, qat_run, tmp_path):
    from ernie_cls.errors import ConfigError
    from release.export import ExportConfig, export

    with pytest.raises(ConfigError, match="n-gram branch"):
        export(ExportConfig(checkpoint=str(ngram_checkpoint), qat=str(qat_run[0] / "best"), output=str(tmp_path / "x")))


def test_export_refuses_a_qat_checkpoint_whose_table_differs(ngram_checkpoint, tmp_path):
    """Same branch settings, another table (e.g. QAT of a checkpoint whose branch was refitted since)."""
    import paddle

    from ernie_cls.errors import ConfigError
    from release.export import ExportConfig, export
    from training.qat import QATConfig, run_qat

    run_qat(QATConfig(checkpoint=str(ngram_checkpoint), output=str(tmp_path / "qat"), max_steps=1, progress=False))
    weights_file = tmp_path / "qat" / "best" / "model_state.pdparams"
    state = paddle.load(str(weights_file))
    state["ngram_table"] = paddle.to_tensor(np.asarray(state["ngram_table"]) * 1.01)
    paddle.save(state, str(weights_file))
    with pytest.raises(ConfigError, match="another table"):
        export(
            ExportConfig(
                checkpoint=str(ngram_checkpoint), qat=str(tmp_path / "qat" / "best"), output=str(tmp_path / "x")
            )
        )


def test_parity_catches_a_corrupted_transformer_weight_behind_the_branch(ngram_checkpoint, tmp_path, monkeypatch):
    """With the branch taking half the output, a corrupted GEMM weight of the transformer in the ONNX file still
    fails export's Paddle-vs-ONNX check (its tolerance shrinks with the transformer's share)."""
    import release.export as ex

    corrupt_onnx_exports(monkeypatch)
    with pytest.raises(ex.ExportCheckError, match="paddle_fp32_vs_onnx_fp32"):
        ex.export(ex.ExportConfig(checkpoint=str(ngram_checkpoint), output=str(tmp_path / "bad")))


def test_the_transformer_only_int8_check_fails_when_the_transformer_parts_disagree(ngram_checkpoint, monkeypatch):
    """export's qat_vs_onnx_int8_transformer: with a confident branch the blended outputs still agree everywhere while
    the INT8 side's transformer part predicts the other class on every text; the blended check cannot see it, this
    one fails."""
    import training.ngram_model
    from release.config import ExportConfig
    from release.export import _agreement_check, _transformer_parts
    from training.modeling import load_checkpoint

    model, tokenizer, _ = load_checkpoint(ngram_checkpoint)
    ids = tokenizer.encode_ids(["味道很好，送餐很快", "太难吃了，再也不点", "一般般吧", "服务态度差"])
    ngram = np.array([[8.0, -8.0], [-8.0, 8.0], [8.0, -8.0], [-8.0, 8.0]])  # a confident branch

    class ConfidentHead:
        def logits(self, _ids):
            return ngram

    monkeypatch.setattr(training.ngram_model, "head_of", lambda _model: ConfidentHead())
    transformer, w = np.array([[1.0, -1.0], [-1.0, 1.0], [-1.0, 1.0], [1.0, -1.0]]), 0.5
    qat, int8 = ngrams.blend(transformer, ngram, w), ngrams.blend(-transformer, ngram, w)
    assert (qat.argmax(-1) == int8.argmax(-1)).all()  # what the blended check compares: full agreement
    cfg = ExportConfig(checkpoint=str(ngram_checkpoint), output="unused")
    check = _agreement_check(*_transformer_parts(model, ids, qat, int8), cfg.min_int8_agreement)
    assert check["argmax_agreement"] == 0.0 and not check["passed"]


def test_the_int8_accuracy_gate_judges_the_transformer_part_behind_the_branch():
    """Blended INT8 accuracy equal to FP32's, the transformer part alone 2 pt worse: the gate fails on the latter."""
    from release.export import ExportCheckError, ExportConfig, _int8_accuracy_check

    cfg = ExportConfig(checkpoint="unused", output="unused")
    fp32 = {"test_accuracy": 0.90, "test_accuracy_transformer_alone": 0.88}
    metrics = {"onnx-fp32": fp32, "onnx-int8": {**fp32, "test_accuracy_transformer_alone": 0.86}}
    with pytest.raises(ExportCheckError, match="transformer part alone"):
        _int8_accuracy_check(cfg, metrics)
    metrics["onnx-int8"]["test_accuracy_transformer_alone"] = 0.879
    check = _int8_accuracy_check(cfg, metrics)
    assert check["passed"] and check["transformer_alone_drop"] == pytest.approx(0.001)


def test_a_checkpoint_naming_a_branch_it_does_not_hold_is_refused(ngram_checkpoint, tmp_path):
    """Two ways a branch checkpoint can be incomplete, both refused with a fix instead of loading a model whose
    branch adds nothing (paddlenlp only warns on a missing weight): the table missing from the weights, and a
    config from before the hash was recorded (no ngram_multipliers)."""
    import paddle

    from ernie_cls.errors import ModelLoadError
    from training.modeling import load_checkpoint

    no_table = tmp_path / "no-table"
    shutil.copytree(ngram_checkpoint, no_table)
    state = paddle.load(str(no_table / "model_state.pdparams"))
    paddle.save({k: v for k, v in state.items() if not k.startswith("ngram_")}, str(no_table / "model_state.pdparams"))
    with pytest.raises(ModelLoadError, match="no n-gram table") as err:
        load_checkpoint(no_table)
    assert err.value.hint

    old_config = tmp_path / "old-config"
    shutil.copytree(ngram_checkpoint, old_config)
    config = json.loads((old_config / "config.json").read_text(encoding="utf-8"))
    del config["ngram_multipliers"]
    (old_config / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ModelLoadError, match="ngram_multipliers"):
        load_checkpoint(old_config)
