"""Labelled data: file -> rows -> cleaned examples -> label map -> stratified train/dev/test split.

Formats are chosen by extension: ``.csv``, ``.tsv`` (or ``.txt``), ``.jsonl`` (or ``.json`` lines). Labels can be
strings or integers; they are mapped to ids 0..K-1 in sorted order (numerically when all are integers).
Rows whose text is empty after normalisation are dropped and counted, never silently.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ernie_cls.errors import DataError
from ernie_cls.tokenization import normalize_text

log = logging.getLogger(__name__)

TEXT_COLUMN_GUESSES = ("text", "review", "sentence", "content", "query", "text_a")
LABEL_COLUMN_GUESSES = ("label", "labels", "class", "category", "intent")
_ENCODING_HINT = "Convert it to UTF-8 first, e.g. `iconv -f GBK -t UTF-8 in.csv > out.csv`."


@dataclass
class Example:
    text: str  # normalised
    label: str


@dataclass
class LoadReport:
    path: str
    rows: int = 0
    dropped_empty_text: int = 0
    dropped_empty_label: int = 0
    sha256: str = ""

    def summary(self) -> str:
        return (
            f"{self.path}: {self.rows} rows, kept {self.rows - self.dropped_empty_text - self.dropped_empty_label}, "
            f"dropped {self.dropped_empty_text} with empty text and {self.dropped_empty_label} with empty label"
        )


@dataclass
class LabelMap:
    labels: list[str]  # id -> name
    names: dict[str, str] = field(default_factory=dict)  # optional display names, raw label -> name

    @classmethod
    def from_examples(cls, examples: list[Example], names: dict[str, str] | None = None) -> LabelMap:
        raw = {e.label for e in examples}
        ordered = sorted(raw, key=int) if all(_is_int(x) for x in raw) else sorted(raw)
        return cls(ordered, dict(names or {}))

    def id_of(self, label: str) -> int:
        return self.labels.index(label)

    def display(self, idx: int) -> str:
        raw = self.labels[idx]
        return self.names.get(raw, raw)

    def to_json(self) -> dict:
        return {
            "id2label": {str(i): self.display(i) for i in range(len(self.labels))},
            "raw_labels": list(self.labels),
        }

    @classmethod
    def from_json(cls, data: dict) -> LabelMap:
        raw = data["raw_labels"]
        names = {r: data["id2label"][str(i)] for i, r in enumerate(raw) if data["id2label"][str(i)] != r}
        return cls(list(raw), names)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), ensure_ascii=False, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> LabelMap:
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")))

    def __len__(self) -> int:
        return len(self.labels)


def _is_int(x: str) -> bool:
    try:
        int(x)
    except ValueError:
        return False
    return True


def _pick_column(columns: list[str], wanted: str | None, guesses: tuple[str, ...], kind: str, path: Path) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise DataError(
                f"{path}: no {kind} column {wanted!r}; the file has columns {columns}.",
                f"Pass --{kind}-col with one of {columns}.",
            )
        return wanted
    for guess in guesses:
        if guess in columns:
            return guess
    raise DataError(
        f"{path}: cannot tell which column holds the {kind}; the file has columns {columns}.",
        f"Pass --{kind}-col <name>.",
    )


def _read_rows(path: Path) -> tuple[list[str], list[dict], str]:
    """Rows as dicts, the column names and the file's sha256, for any supported format (one read)."""
    if not path.is_file():
        raise DataError(f"Data file {path} does not exist.", "Check the path, e.g. `ls data/`.")
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        bad_line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{path} is not valid UTF-8 (first bad byte on line {bad_line}).", _ENCODING_HINT) from None
    if not content.strip():
        raise DataError(f"{path} is empty.", "Give a file with a header row and at least one labelled row per class.")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        rows = []
        for lineno, raw_line in enumerate(content.splitlines(), 1):
            if not raw_line.strip():
                continue
            try:
                obj = json.loads(raw_line)
            except json.JSONDecodeError as err:
                raise DataError(
                    f"{path}:{lineno} is not valid JSON ({err.msg}).",
                    'Each line must be one JSON object, e.g. {"text": "...", "label": "..."}.',
                ) from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno} is not a JSON object.", 'Write {"text": ..., "label": ...}.')
            rows.append({k: "" if v is None else str(v) for k, v in obj.items()})
        columns = sorted({k for r in rows for k in r})
        return columns, rows, digest
    delimiter = "\t" if suffix in (".tsv", ".txt") else ","
    reader = csv.DictReader(content.splitlines(), delimiter=delimiter)
    columns = list(reader.fieldnames or [])
    rows = [{k: (v or "") for k, v in r.items() if k is not None} for r in reader]
    return columns, rows, digest


def load_examples(
    path: str | Path, text_col: str | None = None, label_col: str | None = None, require_labels: bool = True
) -> tuple[list[Example], LoadReport]:
    path = Path(path)
    columns, rows, digest = _read_rows(path)
    report = LoadReport(str(path), rows=len(rows), sha256=digest)
    if not rows:
        raise DataError(f"{path} has a header but no data rows.", "Add labelled rows below the header.")
    tcol = _pick_column(columns, text_col, TEXT_COLUMN_GUESSES, "text", path)
    lcol = _pick_column(columns, label_col, LABEL_COLUMN_GUESSES, "label", path) if require_labels else None
    examples = []
    for row in rows:
        text = normalize_text(row.get(tcol, ""))
        label = row.get(lcol, "").strip() if lcol else ""
        if not text:
            report.dropped_empty_text += 1
        elif lcol and not label:
            report.dropped_empty_label += 1
        else:
            examples.append(Example(text, label))
    if report.dropped_empty_text or report.dropped_empty_label:
        log.warning("%s", report.summary())
    if not examples:
        raise DataError(f"{path}: no row has both a non-empty text and a label.", f"Check --text-col {tcol!r}.")
    return examples, report


def check_trainable(examples: list[Example], path: str) -> None:
    counts = Counter(e.label for e in examples)
    if len(counts) < 2:
        raise DataError(
            f"{path}: every row has the label {next(iter(counts))!r}; a classifier needs at least two classes.",
            "Add examples of the other classes, or check --label-col.",
        )


def check_known_labels(examples: list[Example], label_map: LabelMap, path: str) -> None:
    unknown = sorted({e.label for e in examples} - set(label_map.labels))
    if unknown:
        raise DataError(
            f"{path}: labels {unknown[:10]} never occur in the training data (known: {label_map.labels}).",
            "Fix the labels, or add training examples of these classes and retrain.",
        )


@dataclass
class Splits:
    train: list[Example]
    dev: list[Example]
    test: list[Example]


def stratified_split(examples: list[Example], test_size: float, dev_size: float, seed: int) -> Splits:
    """Test first (``test_size`` of all rows), then dev (``dev_size`` of all rows) from the rest, stratified.

    The test split equals scikit-learn's ``train_test_split(test_size, stratify=labels, random_state=seed)``, so
    baselines computed that way are compared on the same rows.
    """
    from sklearn.model_selection import train_test_split

    counts = Counter(e.label for e in examples)
    rare = [label for label, n in counts.items() if n < 3]
    if rare:
        raise DataError(
            f"Classes {rare} have fewer than 3 examples; a stratified train/dev/test split needs at least 3 each.",
            "Add examples, or give your own splits with --train-file/--dev-file/--test-file.",
        )
    rest, test = train_test_split(
        examples, test_size=test_size, stratify=[e.label for e in examples], random_state=seed
    )
    train, dev = train_test_split(
        rest, test_size=dev_size / (1 - test_size), stratify=[e.label for e in rest], random_state=seed
    )
    return Splits(list(train), list(dev), list(test))
