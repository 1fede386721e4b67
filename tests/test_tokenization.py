"""The Rust tokenizer gives id-for-id what paddlenlp's ErnieTokenizer gives, and normalisation is as documented."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ernie_cls.errors import ModelLoadError
from ernie_cls.tokenization import SPECIAL_TOKENS, ErnieTokenizerFast, build_vocab, normalize_text
from tests.conftest import waimai_rows

TRICKY = [
    "很快，好吃，味道足，量大",
    "iPhone12 Pro Max 太贵了!!!😡😡 等了2小时",
    "ＡＢＣ１２３　全角，测试！ｈｅｌｌｏ",
    "  多个   空格\t\n换行\r\n  结尾   ",
    "café NAÏVE Straße İstanbul ÅNGSTRÖM",
    "零\u200b宽\u200d字\ufeff符\u2060测试",
    "😀👍🏻👨‍👩‍👧 🇨🇳",
    "$100 €5 ¥30 ±2 ≥3 © ® ™ ½",
    "µ² º 〇 ŋ Ø Ʊ",
    "混合English和123数字abc_def-ghi@example.com http://x.cn/a?b=1",
    "𠀀𪜀𫝀𫠠𬺰 rare cjk extensions",
    "①②③ ﬁ … ㈠ ㊣",
    "\x00\x07控制\x1f字符\x7f",
    "RTL \u202eabc\u202c mark \u200f",
    "ΟΔΟΣ. ΣΑΣ Σ",  # final sigma
    "\U0001e000 combining glagolitic, e\u0301 decomposed",
    "unbelievably_long_token_" * 8,
    "太长了" * 300,
    "0\u2e43 \u061d \u2e5d punctuation newer than the Rust tables",
    "",
]


@pytest.fixture(scope="module")
def vocab():
    corpus = [r["review"] for r in waimai_rows(400)] + ["Hello world running quickly unbelievable iPhone Pro Max"] * 5
    return build_vocab(corpus, vocab_size=3000)


@pytest.fixture(scope="module")
def pair(vocab, tmp_path_factory):
    """(ours, paddlenlp's) loaded from the same saved directory."""
    from paddlenlp.transformers import ErnieTokenizer

    d = tmp_path_factory.mktemp("tok")
    ErnieTokenizerFast(vocab, max_seq_len=64).save(d)
    return ErnieTokenizerFast.load(d), ErnieTokenizer.from_pretrained(str(d))


def _paddlenlp_ids(slow, text: str, max_len: int) -> list[int]:
    return slow(text, max_length=max_len, truncation=True)["input_ids"]


def test_import_tokenizers_is_the_library_not_our_asset_folder():
    import tokenizers

    assert hasattr(tokenizers, "Tokenizer") and "site-packages" in (tokenizers.__file__ or "")


def _both_paths(fast, normalized: str) -> list[int]:
    """encode_ids (training, batched) and encode_with_overflow (serving, one by one) must give the same ids."""
    batched = fast.encode_ids([normalized], normalized=True)[0]
    [(serving, overflowed)] = fast.encode_with_overflow([normalized], normalized=True)
    assert serving == batched
    assert overflowed == (len(fast._tok.encode(normalized).overflowing) > 0)
    return batched


@pytest.mark.parametrize("text", TRICKY)
def test_ids_match_paddlenlp_on_tricky_strings(pair, text):
    fast, slow = pair
    normalized = normalize_text(text)
    assert _both_paths(fast, normalized) == _paddlenlp_ids(slow, normalized, 64)


def test_user_text_cannot_inject_special_tokens(pair):
    fast, _ = pair
    ids = fast.encode_ids(["退款 [SEP] [CLS] 人工"])[0]
    assert ids.count(fast.sep_id) == 1 and ids.count(fast.cls_id) == 1


@pytest.mark.parametrize("text", [t for t in TRICKY if "[" not in t])
def test_ids_match_paddlenlp_even_without_our_normalisation(pair, text):
    """The Rust pipeline alone reproduces paddlenlp's BasicTokenizer + WordPiece, not just on clean text."""
    from ernie_cls.tokenization import lower_and_strip_accents

    fast, slow = pair
    assert fast._tok.encode(lower_and_strip_accents(text)).ids == _paddlenlp_ids(slow, text, 64)


@pytest.mark.parametrize("max_len", [3, 4, 16, 128, 512])
def test_truncation_matches_paddlenlp(pair, vocab, max_len):
    from paddlenlp.transformers import ErnieTokenizer  # noqa: F401

    fast = ErnieTokenizerFast(vocab, max_seq_len=max_len)
    _, slow = pair
    text = normalize_text("iPhone12 太长了 unbelievable " * 120)
    ids = _both_paths(fast, text)
    assert ids == _paddlenlp_ids(slow, text, max_len)
    assert len(ids) == max_len and ids[0] == fast.cls_id and ids[-1] == fast.sep_id


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=80))
def test_ids_match_paddlenlp_on_arbitrary_unicode(pair, text):
    fast, slow = pair
    normalized = normalize_text(text)
    assert _both_paths(fast, normalized) == _paddlenlp_ids(slow, normalized, 64)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_normalisation_is_idempotent_and_encodable(text):
    once = normalize_text(text)
    assert normalize_text(once) == once
    once.encode("utf-8")  # no lone surrogates survive
    assert once == once.strip() and "  " not in once


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ＡＢＣ１２３，！", "ABC123,!"),
        ("你\u3000好\t\n吗", "你 好 吗"),
        ("零\u200b宽\ufeff", "零宽"),
        ("lone \ud800 surrogate", "lone surrogate"),
        ("NUL\x00 and bell\x07", "NUL and bell"),
        ("  \u200b  ", ""),
        ("Emoji 😀 stays", "Emoji 😀 stays"),
        ("Case Kept", "Case Kept"),
        ("inject [SEP] [CLS]x ［MASK］", "inject [sep] [cls]x [mask]"),
    ],
)
def test_normalisation_spec(raw, expected):
    assert normalize_text(raw) == expected


def test_vocab_builder_is_deterministic_across_processes():
    import subprocess
    import sys

    code = (
        "from tests.conftest import waimai_rows; from ernie_cls.tokenization import build_vocab; "
        "print(list(build_vocab([r['review'] for r in waimai_rows(80)], vocab_size=600)))"
    )
    outputs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        for _ in range(3)
    }
    assert len(outputs) == 1


def test_vocab_builder_puts_special_tokens_first_and_covers_the_corpus(vocab):
    assert [vocab[t] for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    for ch in "好吃味道":
        assert ch in vocab
    assert "hello" in vocab  # frequent Latin words are learned whole


def test_saved_tokenizer_round_trips_and_records_settings(vocab, tmp_path):
    tok = ErnieTokenizerFast(vocab, max_seq_len=48)
    tok.save(tmp_path)
    settings_file = json.loads((tmp_path / "ernie_cls_tokenizer.json").read_text())
    assert settings_file["max_seq_len"] == 48 and settings_file["normalization_version"] == 1
    again = ErnieTokenizerFast.load(tmp_path)
    assert again.max_seq_len == 48 and again.vocab == vocab
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))  # usable by any HF tokenizers client
    assert raw.encode("好吃").ids == again.encode_ids(["好吃"])[0]


def test_padding_and_overflow_flags(vocab):
    tok = ErnieTokenizerFast(vocab, max_seq_len=8)
    (short, cut_short), (long, cut_long) = tok.encode_with_overflow(["好吃", "好吃好吃好吃好吃好吃"])
    assert (cut_short, cut_long) == (False, True) and len(long) == 8
    input_ids, token_type_ids = tok.pad([short, long])
    assert input_ids.shape == (2, 8) and input_ids.dtype.name == "int64"
    assert (input_ids[0, len(short) :] == tok.pad_id).all() and not token_type_ids.any()


def test_loading_a_directory_without_vocab_says_what_to_do(tmp_path):
    with pytest.raises(ModelLoadError, match=r"vocab\.txt is missing") as err:
        ErnieTokenizerFast.load(tmp_path)
    assert "ernie-cls train" in err.value.hint


def test_loading_a_newer_normalisation_version_is_refused(vocab, tmp_path):
    ErnieTokenizerFast(vocab).save(tmp_path)
    (tmp_path / "ernie_cls_tokenizer.json").write_text(json.dumps({"normalization_version": 99}))
    with pytest.raises(ModelLoadError, match="normalisation v99"):
        ErnieTokenizerFast.load(tmp_path)
