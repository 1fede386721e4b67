"""`ernie-cls evaluate` and `ernie-cls predict`: a trained checkpoint applied to a file (or stdin)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

from ernie_cls.calibration import softmax
from ernie_cls.errors import DataError
from ernie_cls.tokenization import normalize_text
from training.batching import encode
from training.data import check_known_labels, load_examples
from training.loop import evaluate_encoded, predict_logits
from training.modeling import load_checkpoint

__all__ = ["evaluate_file", "load_checkpoint", "predict_texts", "read_texts"]


def evaluate_file(checkpoint: str, data: str, text_col: str | None = None, label_col: str | None = None) -> dict:
    model, tokenizer, label_map = load_checkpoint(checkpoint)
    examples, report = load_examples(data, text_col, label_col)
    check_known_labels(examples, label_map, data)
    metrics = evaluate_encoded(model, tokenizer, encode(examples, tokenizer, label_map), label_map)
    metrics["data"] = {"path": data, "sha256": report.sha256, "dropped_empty_text": report.dropped_empty_text}
    return metrics


def read_texts(source: str, text_col: str | None = None) -> list[str]:
    """Texts from stdin ("-") or a .txt file (one per line), or the text column of a CSV/TSV/JSONL file."""
    if source == "-":
        return [line.rstrip("\n") for line in sys.stdin]
    path = Path(source)
    if path.suffix.lower() in (".csv", ".tsv", ".jsonl", ".json", ".ndjson"):
        examples, _ = load_examples(path, text_col, require_labels=False)
        return [e.text for e in examples]
    if not path.is_file():
        raise DataError(f"Input file {path} does not exist.", "Check the path, or pass - to read stdin.")
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{path} is not valid UTF-8.", "Convert it, e.g. `iconv -f GBK -t UTF-8`.") from None


def predict_texts(loaded: tuple, texts: list[str], top_k: int = 0) -> Iterator[dict]:
    """One result per input line; lines empty after normalisation get an error entry instead of a label.

    `loaded` is what :func:`training.modeling.load_checkpoint` returns (load it before reading the input, so a
    bad checkpoint fails before stdin is consumed).
    """
    model, tokenizer, label_map = loaded
    normalized = [normalize_text(t) for t in texts]
    keep = [i for i, t in enumerate(normalized) if t]
    probs = softmax(
        predict_logits(model, tokenizer, tokenizer.encode_ids([normalized[i] for i in keep], normalized=True))
    )
    by_index = dict(zip(keep, probs, strict=True))
    names = [label_map.display(i) for i in range(len(label_map))]
    for i, text in enumerate(texts):
        if i not in by_index:
            yield {"index": i, "text": text, "error": "empty after normalisation"}
            continue
        p = by_index[i]
        best = int(p.argmax())
        row = {
            "index": i,
            "text": text,
            "label": names[best],
            "score": round(float(p[best]), 6),
            "probabilities": {n: round(float(v), 6) for n, v in zip(names, p, strict=True)},
        }
        if top_k:
            order = p.argsort()[::-1][:top_k]
            row["top_k"] = [{"label": names[j], "score": round(float(p[j]), 6)} for j in order]
        yield row
