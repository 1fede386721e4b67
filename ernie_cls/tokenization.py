"""The one tokenizer used by training and serving: text normalisation + ERNIE WordPiece in Rust.

    raw text -> normalize_text() -> HF `tokenizers` pipeline (BERT clean/lowercase/CJK split, punctuation and
    symbol split, WordPiece) -> [CLS] ids [SEP], truncated to max_seq_len -> padded numpy batch

The Rust pipeline is configured to give id-for-id what paddlenlp's ``ErnieTokenizer`` gives for the same
vocab (a golden test proves it). ``normalize_text`` runs first in both training and serving, so a model never
sees text normalised differently from how it was trained. The spec is in ``tokenizers/README.md``.

Files a tokenizer directory holds (written by :meth:`ErnieTokenizerFast.save`):
    vocab.txt                  one token per line, id = line number (paddlenlp reads this)
    tokenizer_config.json      paddlenlp's ErnieTokenizer settings (``ErnieTokenizer.from_pretrained`` works)
    tokenizer.json             the HF fast tokenizer, self-contained (any `tokenizers` client can load it)
    ernie_cls_tokenizer.json   our settings: normalisation spec version, max_seq_len
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from ernie_cls.errors import ModelLoadError
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

NORMALIZATION_VERSION = 1
SPECIAL_TOKENS = ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]")
PAD, CLS, SEP, MASK, UNK = SPECIAL_TOKENS
MAX_INPUT_CHARS_PER_WORD = 100  # paddlenlp's WordpieceTokenizer default: longer words become [UNK]

VOCAB_FILE = "vocab.txt"
FAST_TOKENIZER_FILE = "tokenizer.json"
PADDLENLP_CONFIG_FILE = "tokenizer_config.json"
SETTINGS_FILE = "ernie_cls_tokenizer.json"

# paddlenlp's BasicTokenizer isolates every Unicode symbol (category S*: emoji, currency, math) and these
# code points as single tokens; HF's BertPreTokenizer only isolates punctuation, so we add this split.
# It also isolates CJK ideographs from paddlenlp's own range list, which differs from HF's in Extension E
# (paddlenlp: U+2B820.., HF: U+2B920..), so we isolate paddlenlp's ranges explicitly.
_PADDLENLP_EXTRA_SYMBOLS = "\u00ad\u00b2\u00ba\u3007\u00b5\u00d8\u014b\u01b1"
_PADDLENLP_CJK_RANGES = (
    r"\x{4E00}-\x{9FFF}\x{3400}-\x{4DBF}\x{20000}-\x{2A6DF}\x{2A700}-\x{2B73F}\x{2B740}-\x{2B81F}"
    r"\x{2B820}-\x{2CEAF}\x{F900}-\x{FAFF}\x{2F800}-\x{2FA1F}"
)
# \p{P} too: the Rust BertPreTokenizer's punctuation table is older than Python's and misses 104 code points that
# paddlenlp splits off (U+2E43..U+2E5D, U+061D, ...; found by the hypothesis parity test on "0\u2e43").
_SYMBOL_SPLIT = Regex(r"[\p{S}\p{P}" + _PADDLENLP_EXTRA_SYMBOLS + _PADDLENLP_CJK_RANGES + "]")

# Categories deleted by normalisation: Cc control (after whitespace is mapped to a space), Cf format
# (zero-width space/joiner, BOM, bidi marks, soft hyphen), Cs lone surrogates (invalid in UTF-8), Co private use,
# Cn unassigned. Cn matters for parity: paddlenlp drops code points unassigned in Python's Unicode tables, while the
# Rust tokenizer's newer tables may know them (found by the hypothesis test: U+18CD6).
_DELETED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})
_WHITESPACE_RUN = re.compile(r"\s+")
# paddlenlp turns a literal "[SEP]" etc. inside user text into the special token, so a message could inject
# structure. We defuse them by lowercasing the literal: the model lowercases text anyway, so nothing else changes.
_SPECIAL_LITERAL = re.compile(r"\[(?:PAD|CLS|SEP|MASK|UNK)\]")


def normalize_text(text: str) -> str:
    """Canonical form of a text, applied before tokenisation in training and serving alike.

    1. whitespace of any kind (incl. tabs, newlines, U+3000 ideographic space, U+2028) -> one ASCII space,
       leading/trailing whitespace removed;
    2. lone surrogates removed (they cannot be encoded as UTF-8 and come from broken clients);
    3. Unicode NFKC: full-width letters/digits/punctuation -> half-width (ＡＢＣ１２３，-> ABC123,),
       compatibility forms folded (① -> 1, ﬁ -> fi, … -> ...);
    4. control (Cc), format (Cf: zero-width, BOM, RTL/LTR marks), private-use (Co) and unassigned (Cn, per
       Python's Unicode database, recorded as ``unicode_version`` in the tokenizer settings) characters removed.

    5. special-token literals ([CLS], [SEP], [PAD], [MASK], [UNK]) lowercased, so user text cannot inject them.

    Case is otherwise kept here; lowercasing (and accent stripping) is part of the ERNIE tokenizer itself.
    """
    if "[" in text:
        text = _SPECIAL_LITERAL.sub(lambda m: m.group(0).lower(), text)
    if text.isascii():  # fast path
        cleaned = "".join(ch for ch in text if ch.isprintable() or ch.isspace())
        return _WHITESPACE_RUN.sub(" ", cleaned).strip()
    text = "".join(ch for ch in text if not 0xD800 <= ord(ch) <= 0xDFFF)
    text = unicodedata.normalize("NFKC", text)
    text = _WHITESPACE_RUN.sub(" ", text)
    text = "".join(ch for ch in text if unicodedata.category(ch) not in _DELETED_CATEGORIES)
    if "[" in text:  # NFKC can create brackets from full-width ones
        text = _SPECIAL_LITERAL.sub(lambda m: m.group(0).lower(), text)
    return _WHITESPACE_RUN.sub(" ", text).strip()


def lower_and_strip_accents(text: str) -> str:
    """paddlenlp's lowercase + accent stripping, done in Python so Unicode tables and case rules match it.

    The Rust pipeline repeats both steps, which is harmless (idempotent), but its tables are older for marks
    (U+1E000 is Mn to Python, not to the Rust crate) and it lowercases char by char (no final-sigma rule).
    """
    if text.isascii():
        return text.lower()
    return "".join(ch for ch in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(ch) != "Mn")


def _build_pipeline(vocab: dict[str, int] | None, do_lower_case: bool) -> Tokenizer:
    model = models.WordPiece(vocab=vocab or {UNK: 0}, unk_token=UNK, max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD)
    tok = Tokenizer(model)
    # CJK characters are isolated by the Split pre-tokenizer below (paddlenlp's exact ranges), so the normaliser's
    # own handle_chinese_chars (same ranges, done by inserting spaces) is redundant; off, encoding is 25 % faster.
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=False, strip_accents=None, lowercase=do_lower_case
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.BertPreTokenizer(), pre_tokenizers.Split(_SYMBOL_SPLIT, behavior="isolated")]
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def _parse_vocab(text: str) -> dict[str, int]:
    tokens = text.split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()
    return {tok: i for i, tok in enumerate(tokens)}


class ErnieTokenizerFast:
    """ERNIE WordPiece tokenizer backed by Rust `tokenizers`, with the project's normalisation in front."""

    def __init__(self, vocab: dict[str, int], max_seq_len: int = 128, do_lower_case: bool = True) -> None:
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise ModelLoadError(
                f"The vocabulary lacks the special tokens {missing}.",
                "Build the vocabulary with `ernie-cls train --base-model scratch:<size>` or use an ERNIE vocab.txt.",
            )
        if max_seq_len < 3:
            raise ValueError("max_seq_len must be >= 3 ([CLS] + one token + [SEP])")
        self.vocab = vocab
        self.max_seq_len = max_seq_len
        self.do_lower_case = do_lower_case
        self.pad_id = vocab[PAD]
        self.cls_id = vocab[CLS]
        self.sep_id = vocab[SEP]
        self.unk_id = vocab[UNK]
        # Encoding runs the pipeline without Rust's template and truncation steps and frames the pieces in Python
        # (`_frame`): the same ids for one sequence, and those two steps cost 45 us of the 83 us an average review
        # took on the service's path. `_tok`, with both steps, is what `save` writes for other runtimes (Triton,
        # HF-compatible tools); tests compare both with paddlenlp.
        self._pieces = _build_pipeline(vocab, do_lower_case)
        self._tok = _build_pipeline(vocab, do_lower_case)
        self._tok.post_processor = processors.TemplateProcessing(
            single=f"{CLS} $A {SEP}",
            pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
            special_tokens=[(CLS, self.cls_id), (SEP, self.sep_id)],
        )
        self._tok.enable_truncation(max_length=max_seq_len)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    # ---------------------------------------------------------------- encoding
    def encode_ids(self, texts: Sequence[str], *, normalized: bool = False) -> list[list[int]]:
        """Token ids ``[CLS] ... [SEP]`` per text, truncated to ``max_seq_len``, unpadded.

        Pass ``normalized=True`` when the texts already went through :func:`normalize_text`.
        """
        batch = self._pieces.encode_batch(self._prepare(texts, normalized), add_special_tokens=False)
        return [self._frame(enc.ids)[0] for enc in batch]

    def encode_with_overflow(self, texts: Sequence[str], *, normalized: bool = False) -> list[tuple[list[int], bool]]:
        """Like :meth:`encode_ids` but also says per text whether truncation dropped tokens.

        Texts are encoded one by one: the few texts of a service request are faster that way than through
        `encode_batch`, whose thread pool would compete with the inference threads for the cores.
        """
        prepared = self._prepare(texts, normalized)
        return [self._frame(self._pieces.encode(text, add_special_tokens=False).ids) for text in prepared]

    def _frame(self, pieces: list[int]) -> tuple[list[int], bool]:
        """``[CLS] pieces[: max_seq_len - 2] [SEP]`` and whether pieces were cut (paddlenlp's single-sequence form)."""
        room = self.max_seq_len - 2
        return [self.cls_id, *pieces[:room], self.sep_id], len(pieces) > room

    def _prepare(self, texts: Sequence[str], normalized: bool) -> list[str]:
        if not normalized:
            texts = [normalize_text(t) for t in texts]
        return [lower_and_strip_accents(t) for t in texts] if self.do_lower_case else list(texts)

    def pad(self, ids: Sequence[Sequence[int]], pad_to: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Right-pad to the longest sequence (dynamic padding) -> (input_ids, token_type_ids), int64."""
        width = max(pad_to or 0, max((len(x) for x in ids), default=0))
        input_ids = np.full((len(ids), width), self.pad_id, dtype=np.int64)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = seq
        return input_ids, np.zeros_like(input_ids)

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return self.pad(self.encode_ids(texts))

    def tokenize(self, text: str) -> list[str]:
        """Word pieces of one text, without special tokens (for inspection and explanations)."""
        return self._tok.encode(self._prepare([text], False)[0], add_special_tokens=False).tokens

    def pieces_with_offsets(self, text: str, *, normalized: bool = False) -> tuple[str, list[tuple[str, int, int]]]:
        """(the text as the model reads it, [(piece, start, end)] with character offsets into that text), pieces
        as encode_ids cuts them at max_seq_len. For showing attributions on the text."""
        (prepared,) = self._prepare([text], normalized)
        encoding = self._pieces.encode(prepared, add_special_tokens=False)
        pieces = [(piece, start, end) for piece, (start, end) in zip(encoding.tokens, encoding.offsets, strict=True)]
        return prepared, pieces[: self.max_seq_len - 2]

    # ---------------------------------------------------------------- files
    def save(self, directory: str | Path) -> None:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        by_id = sorted(self.vocab.items(), key=lambda kv: kv[1])
        (out / VOCAB_FILE).write_text("".join(f"{tok}\n" for tok, _ in by_id), encoding="utf-8")
        self._tok.save(str(out / FAST_TOKENIZER_FILE))
        paddlenlp_config = {
            "tokenizer_class": "ErnieTokenizer",
            "do_lower_case": self.do_lower_case,
            "unk_token": UNK,
            "sep_token": SEP,
            "pad_token": PAD,
            "cls_token": CLS,
            "mask_token": MASK,
            "model_max_length": self.max_seq_len,
        }
        (out / PADDLENLP_CONFIG_FILE).write_text(json.dumps(paddlenlp_config, indent=2), encoding="utf-8")
        settings = {
            "normalization_version": NORMALIZATION_VERSION,
            "normalization": "whitespace->space, drop surrogates, NFKC, drop Cc/Cf/Co/Cn; see tokenizers/README.md",
            "unicode_version": unicodedata.unidata_version,
            "do_lower_case": self.do_lower_case,
            "max_seq_len": self.max_seq_len,
            "vocab_size": self.vocab_size,
        }
        (out / SETTINGS_FILE).write_text(json.dumps(settings, indent=2), encoding="utf-8")

    @classmethod
    def load(
        cls,
        directory: str | Path,
        max_seq_len: int | None = None,
        read: Callable[[str], bytes | None] | None = None,
    ) -> ErnieTokenizerFast:
        """Load from a directory holding at least ``vocab.txt`` (paddlenlp or our own checkpoint).

        `read(file name)` -> its bytes or None if absent replaces reading from disk (the service passes a reader
        that returns the bytes it has just hashed, so what is verified is what is loaded)."""
        d = Path(directory)
        read = read or (lambda name: (d / name).read_bytes() if (d / name).is_file() else None)
        vocab = read(VOCAB_FILE)
        if vocab is None:
            raise ModelLoadError(
                f"No tokenizer in {d}: {VOCAB_FILE} is missing.",
                "Point at a checkpoint written by `ernie-cls train` (it bundles the tokenizer), "
                "or copy the model's vocab.txt into that directory.",
            )
        settings: dict = {}
        own, paddlenlp = read(SETTINGS_FILE), read(PADDLENLP_CONFIG_FILE)
        if own is not None:
            settings = json.loads(own.decode("utf-8"))
            version = settings.get("normalization_version", NORMALIZATION_VERSION)
            if version != NORMALIZATION_VERSION:
                raise ModelLoadError(
                    f"{d} was written with text normalisation v{version}; this ernie-cls implements "
                    f"v{NORMALIZATION_VERSION}.",
                    "Use the ernie-cls version that trained the model, or retrain/re-export it with this one.",
                )
        elif paddlenlp is not None:
            settings = json.loads(paddlenlp.decode("utf-8"))
        return cls(
            _parse_vocab(vocab.decode("utf-8")),
            max_seq_len=max_seq_len or int(settings.get("max_seq_len", 128)),
            do_lower_case=bool(settings.get("do_lower_case", True)),
        )


def build_vocab(
    texts: Iterable[str], vocab_size: int = 8000, min_frequency: int = 2, do_lower_case: bool = True
) -> dict[str, int]:
    """A WordPiece vocabulary for training from scratch, built deterministically from a corpus.

    The corpus goes through the tokenizer's own normalisation and pre-tokenisation, then:
    special tokens first ([PAD]=0, [CLS]=1, [SEP]=2, [MASK]=3, [UNK]=4); every character seen (as a word start,
    and as a ``##`` continuation inside Latin/digit words), most frequent first; then whole words seen at least
    `min_frequency` times; ties broken by the token itself; cut at `vocab_size`.

    Not HF's WordPieceTrainer: it orders equal-count tokens through a hash map that is seeded per process, so
    the same corpus gave different ids run to run and `--seed` could not reproduce a training run.
    """
    pipeline = _build_pipeline(None, do_lower_case)
    assert pipeline.normalizer is not None and pipeline.pre_tokenizer is not None
    words: Counter[str] = Counter()
    for text in texts:
        text = normalize_text(text)
        if do_lower_case:
            text = lower_and_strip_accents(text)
        normalized = pipeline.normalizer.normalize_str(text)
        words.update(word for word, _ in pipeline.pre_tokenizer.pre_tokenize_str(normalized))
    pieces: Counter[str] = Counter()
    for word, count in words.items():
        if len(word) > MAX_INPUT_CHARS_PER_WORD:
            continue
        pieces[word[0]] += count
        for ch in word[1:]:
            pieces["##" + ch] += count
    by_count = sorted(pieces.items(), key=lambda kv: (-kv[1], kv[0]))
    whole = sorted(
        ((w, n) for w, n in words.items() if len(w) > 1 and n >= min_frequency and len(w) <= MAX_INPUT_CHARS_PER_WORD),
        key=lambda kv: (-kv[1], kv[0]),
    )
    tokens = list(SPECIAL_TOKENS)
    for token, _ in [*by_count, *whole]:
        if len(tokens) >= vocab_size:
            break
        if token not in SPECIAL_TOKENS:
            tokens.append(token)
    return {tok: i for i, tok in enumerate(tokens)}
