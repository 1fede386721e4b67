"""Chinese text noise, as real customer messages carry it: for augmentation and the robustness benchmark.

    noisy(text, kind, rate, rng): each character is hit with probability `rate` by one edit of `kind`:
      delete      the character is dropped                          (typing slips)
      swap        it changes place with the next one                 (typing order)
      duplicate   it is doubled                                      (key bounce, "好好吃")
      homophone   a character with the same toneless pinyin          (pinyin IME picks: 在/再, 做/作)
      width       full-width <-> half-width for ASCII and punctuation (，/, ！/!  ＡＢＣ/ABC)
      insert      an emoji or punctuation mark is inserted after it   (pasted reactions, "!!!")
      mixed       one of the above, chosen per hit

Homophones come from pypinyin over the characters of a corpus (`HomophoneTable.from_texts`), so substitutes are
characters the model has seen. Deterministic for a given `random.Random`.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable

from ernie_cls.errors import ConfigError

NOISE_KINDS = ("delete", "swap", "duplicate", "homophone", "width", "insert")
NOISE_CHOICES = (*NOISE_KINDS, "mixed")  # what noisy() accepts: one kind, or a kind drawn per hit
INSERTS = ["😀", "😡", "👍", "🙏", "😂", "！", "!", "？", "。", "~", "...", "，", "💯", "😭"]


def _is_cjk(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff"


def _to_other_width(ch: str) -> str:
    code = ord(ch)
    if 0x21 <= code <= 0x7E:
        return chr(code + 0xFEE0)  # ASCII -> full-width form
    if 0xFF01 <= code <= 0xFF5E:
        return chr(code - 0xFEE0)
    if ch == " ":
        return "\u3000"
    if ch == "\u3000":
        return " "
    return ch


class HomophoneTable:
    def __init__(self, groups: dict[str, list[str]]) -> None:
        self._by_char = {ch: [o for o in group if o != ch] for group in groups.values() for ch in group}

    @classmethod
    def from_texts(cls, texts: Iterable[str], min_count: int = 3) -> HomophoneTable:
        from pypinyin import Style, lazy_pinyin

        counts: dict[str, int] = defaultdict(int)
        for text in texts:
            for ch in text:
                if _is_cjk(ch):
                    counts[ch] += 1
        groups: dict[str, list[str]] = defaultdict(list)
        for ch in sorted(c for c, n in counts.items() if n >= min_count):
            groups[lazy_pinyin(ch, style=Style.NORMAL)[0]].append(ch)
        return cls(dict(groups))

    def substitute(self, ch: str, rng: random.Random) -> str:
        options = self._by_char.get(ch)
        return rng.choice(options) if options else ch

    def token_ids(self, vocab: dict[str, int]) -> dict[int, list[int]]:
        """The table over a vocabulary: token id -> ids of its homophones (characters in the vocabulary only)."""
        table = {}
        for ch, options in self._by_char.items():
            ids = [vocab[o] for o in options if o in vocab]
            if ch in vocab and ids:
                table[vocab[ch]] = ids
        return table


def check_noise_kinds(kinds: Iterable[str]) -> None:
    unknown = sorted(set(kinds) - set(NOISE_CHOICES))
    if unknown:
        raise ConfigError(f"unknown noise kind(s) {unknown}.", f"use one of {', '.join(NOISE_CHOICES)}.")


def noisy(text: str, kind: str, rate: float, rng: random.Random, homophones: HomophoneTable | None = None) -> str:
    if kind not in NOISE_CHOICES:
        check_noise_kinds([kind])
    chars = list(text)
    out: list[str] = []
    i = 0
    while i < len(chars):
        ch = chars[i]
        if rng.random() >= rate:
            out.append(ch)
            i += 1
            continue
        edit = rng.choice(NOISE_KINDS) if kind == "mixed" else kind
        if edit == "homophone" and homophones is None:
            edit = "width"
        if edit == "delete":
            pass
        elif edit == "swap" and i + 1 < len(chars):
            out += [chars[i + 1], ch]
            i += 1
        elif edit == "duplicate":
            out += [ch, ch]
        elif edit == "homophone":
            assert homophones is not None
            out.append(homophones.substitute(ch, rng))
        elif edit == "width":
            out.append(_to_other_width(ch))
        elif edit == "insert":
            out += [ch, rng.choice(INSERTS)]
        else:
            out.append(ch)
        i += 1
    return "".join(out) or text  # never empty: an empty text is not a classification input
