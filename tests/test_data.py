"""Loaders, splits and every data error message (each must say how to fix it)."""

from __future__ import annotations

from collections import Counter

import pytest

from ernie_cls.errors import DataError
from tests.conftest import waimai_rows, write_csv, write_jsonl
from training.data import LabelMap, check_known_labels, check_trainable, load_examples, stratified_split


def test_loads_csv_tsv_and_jsonl_alike(tmp_path):
    rows = waimai_rows(5)
    csv_ex, _ = load_examples(write_csv(tmp_path / "a.csv", rows))
    tsv_ex, _ = load_examples(write_csv(tmp_path / "a.tsv", rows, delimiter="\t"))
    jsonl_ex, _ = load_examples(write_jsonl(tmp_path / "a.jsonl", rows))
    assert (
        [(e.text, e.label) for e in csv_ex]
        == [(e.text, e.label) for e in tsv_ex]
        == [(e.text, e.label) for e in jsonl_ex]
    )
    assert len(csv_ex) == 10


def test_explicit_columns_and_integer_labels_in_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"msg": "退款", "y": 2}, {"msg": "好评", "y": 10}])
    examples, _ = load_examples(path, text_col="msg", label_col="y")
    assert [(e.text, e.label) for e in examples] == [("退款", "2"), ("好评", "10")]
    assert LabelMap.from_examples(examples).labels == ["2", "10"]  # numeric order, not string order


def test_string_labels_sorted_and_display_names():
    from training.data import Example

    lm = LabelMap.from_examples([Example("a", "投诉"), Example("b", "咨询")], names={"投诉": "complaint"})
    assert lm.labels == sorted(["投诉", "咨询"])
    assert lm.display(lm.id_of("投诉")) == "complaint"
    assert LabelMap.from_json(lm.to_json()).to_json() == lm.to_json()


def test_missing_column_names_the_columns_and_the_flag(tmp_path):
    path = write_csv(tmp_path / "a.csv", waimai_rows(2))
    with pytest.raises(DataError) as err:
        load_examples(path, text_col="comment")
    assert "['label', 'review']" in err.value.message and "--text-col" in err.value.hint


def test_unguessable_text_column_asks_for_the_flag(tmp_path):
    path = write_csv(tmp_path / "a.csv", [{"body": "好", "label": "1"}])
    with pytest.raises(DataError, match="cannot tell which column") as err:
        load_examples(path)
    assert "--text-col" in err.value.hint


def test_empty_file_and_header_only(tmp_path):
    (tmp_path / "empty.csv").write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="is empty"):
        load_examples(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("label,review\n", encoding="utf-8")
    with pytest.raises(DataError, match="no data rows"):
        load_examples(tmp_path / "header.csv")


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_examples(tmp_path / "nope.csv")


def test_non_utf8_file_names_the_line_and_how_to_convert(tmp_path):
    path = tmp_path / "gbk.csv"
    path.write_bytes("label,review\n1,好吃\n0,太难吃了\n".encode("gbk"))
    with pytest.raises(DataError, match=r"not valid UTF-8 .*line 2") as err:
        load_examples(path)
    assert "iconv" in err.value.hint


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("label,review\n1,好吃\n".encode("utf-8-sig"))
    examples, _ = load_examples(path)
    assert examples[0].label == "1"


def test_empty_texts_are_dropped_and_counted(tmp_path):
    rows = [
        {"label": "1", "review": "好吃"},
        {"label": "0", "review": "  \u200b "},
        {"label": "0", "review": ""},
        {"label": "", "review": "没有标签"},
    ]
    examples, report = load_examples(write_csv(tmp_path / "a.csv", rows))
    assert [e.text for e in examples] == ["好吃"]
    assert (report.dropped_empty_text, report.dropped_empty_label) == (2, 1)


def test_bad_jsonl_line_is_reported_with_its_number(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "好", "label": 1}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"a.jsonl:2 is not valid JSON"):
        load_examples(path)


def test_single_class_is_refused(tmp_path):
    examples, _ = load_examples(write_csv(tmp_path / "a.csv", [{"label": "1", "review": t} for t in "甲乙丙"]))
    with pytest.raises(DataError, match="at least two classes") as err:
        check_trainable(examples, "a.csv")
    assert "--label-col" in err.value.hint


def test_label_unseen_in_training_is_refused(tmp_path):
    from training.data import Example

    lm = LabelMap.from_examples([Example("a", "0"), Example("b", "1")])
    with pytest.raises(DataError, match=r"labels \['2'\] never occur in the training data"):
        check_known_labels([Example("c", "2")], lm, "test.csv")


def test_stratified_split_is_reproducible_and_keeps_class_ratios():
    from training.data import Example

    examples = [Example(f"t{i}", "1" if i % 3 == 0 else "0") for i in range(300)]
    a = stratified_split(examples, 0.2, 0.1, seed=42)
    b = stratified_split(examples, 0.2, 0.1, seed=42)
    c = stratified_split(examples, 0.2, 0.1, seed=7)
    assert [e.text for e in a.test] == [e.text for e in b.test] != [e.text for e in c.test]
    assert (len(a.train), len(a.dev), len(a.test)) == (210, 30, 60)
    assert Counter(e.label for e in a.test) == {"0": 40, "1": 20}
    assert not {e.text for e in a.train} & {e.text for e in a.test}


def test_test_split_matches_scikit_learn_so_baselines_compare(small_csv):
    from sklearn.model_selection import train_test_split

    examples, _ = load_examples(small_csv)
    _, expected = train_test_split(examples, test_size=0.2, stratify=[e.label for e in examples], random_state=42)
    assert [e.text for e in stratified_split(examples, 0.2, 0.1, 42).test] == [e.text for e in expected]


def test_split_refuses_classes_too_small_to_stratify():
    from training.data import Example

    with pytest.raises(DataError, match="fewer than 3") as err:
        stratified_split([Example("a", "0")] * 10 + [Example("b", "1")], 0.2, 0.1, 42)
    assert "--train-file" in err.value.hint
