"""The typed contract of manifest.json: what every reader of an artifact relies on, checked once when it is read.

`release/export.py` writes the manifest as JSON; `Manifest.parse` turns the fields that loading and serving depend on
(name, version, labels, max_seq_len, tokenizer, formats, default format, file table) into typed values and refuses a
manifest that lacks one, naming it, before anything is loaded. Report data (metrics, export checks, provenance) is
not part of this contract and stays in the JSON document (`Artifact.manifest`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ernie_cls.errors import ArtifactError


class ManifestError(ArtifactError):
    """manifest.json lacks a field readers need, or holds one of the wrong type (an ArtifactError: the service stays
    not-ready, verify fails)."""


@dataclass(frozen=True)
class FormatSpec:
    """One format of the artifact: its files (paths inside the artifact) and what runs it."""

    name: str
    path: str
    runtime: str  # onnxruntime | paddle-inference | triton
    precision: str
    params: str | None = None  # Paddle: the parameters file next to the program
    temperature: float = 1.0  # fitted on dev at export; 1.0 for artifacts written before calibration existed
    scales: str | None = None  # INT8 Q/DQ: the QAT scales the file was written with


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    labels: tuple[str, ...]  # display names, by output index
    raw_labels: tuple[str, ...]  # the labels as in the training data, by output index
    max_seq_len: int
    tokenizer_path: str
    vocab_size: int
    formats: Mapping[str, FormatSpec]
    default_format: str
    files: Mapping[str, FileEntry]

    @classmethod
    def parse(cls, data: Mapping[str, Any], where: str) -> Manifest:
        """The typed view of a manifest's JSON; raises ManifestError naming the first field that is missing or wrong."""
        try:
            labels = data["labels"]
            ordered = tuple(_text(labels[str(i)], "labels") for i in range(len(labels)))
            formats = {name: _format(name, spec) for name, spec in data["formats"].items()}
            manifest = cls(
                name=str(data.get("name", "")),
                version=str(data.get("version", "")),
                labels=ordered,
                # artifacts from before raw_labels: the labels' own keys, as readers used then
                raw_labels=tuple(_text(x, "raw_labels") for x in data.get("raw_labels") or sorted(labels, key=int)),
                max_seq_len=int(data["max_seq_len"]),
                tokenizer_path=str(data["tokenizer"]["path"]).rstrip("/"),
                vocab_size=int(data["tokenizer"].get("vocab_size", 0)),
                formats=formats,
                default_format=str(data.get("default_format", "onnx-fp32")),
                files={rel: FileEntry(str(f["sha256"]), int(f["size"])) for rel, f in data["files"].items()},
            )
        except KeyError as err:
            raise ManifestError(f"{where} has no {err.args[0]!r} where readers need one.", _HINT) from None
        except (TypeError, ValueError, AttributeError, OverflowError) as err:
            raise ManifestError(f"{where} holds a field of the wrong type ({err}).", _HINT) from None
        problem = manifest._problem()
        if problem:
            raise ManifestError(f"{where} {problem}.", _HINT)
        return manifest

    def _problem(self) -> str | None:
        """Values of the right type that would still break serving."""
        if len(self.labels) < 2 or len(self.raw_labels) != len(self.labels):
            return f"has {len(self.labels)} labels and {len(self.raw_labels)} raw labels (at least 2, as many of each)"
        if self.max_seq_len < 3:
            return f"has max_seq_len {self.max_seq_len} (at least [CLS] + one token + [SEP])"
        bad = [f.name for f in self.formats.values() if not (math.isfinite(f.temperature) and f.temperature > 0)]
        if bad:
            return f"has a temperature that is not a positive number for {bad}"
        if self.default_format not in self.formats:
            return f"names default format {self.default_format!r}, not one it has"
        return None


_HINT = "Re-export the model with `ernie-cls export`; do not edit manifest.json by hand."


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str | int):  # raw labels may be integers in older manifests
        raise TypeError(f"{field} holds {value!r}, not a string")
    return str(value)


def _format(name: str, spec: Mapping[str, Any]) -> FormatSpec:
    return FormatSpec(
        name=name,
        path=str(spec["path"]),
        runtime=str(spec["runtime"]),
        precision=str(spec.get("precision", "")),
        params=str(spec["params"]) if spec.get("params") else None,
        temperature=float(spec.get("temperature", 1.0)),
        scales=str(spec["scales"]) if spec.get("scales") else None,
    )
