"""The typed contract of manifest.json: what every reader of an artifact relies on, checked once when it is read.

`release/export.py` writes the manifest as JSON; `Manifest.parse` turns the fields that loading and serving depend on
(name, version, labels, max_seq_len, tokenizer, formats, default format, file table) into typed values and refuses a
manifest that lacks one, naming it, before anything is loaded. Report data (metrics, export checks, provenance) is
not part of this contract and stays in the JSON document (`Artifact.manifest`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ernie_cls.errors import ErnieClsError


class ManifestError(ErnieClsError):
    """manifest.json lacks a field readers need, or holds one of the wrong type."""

    http_status = 503


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
            ordered = tuple(str(labels[str(i)]) for i in range(len(labels)))
            formats = {name: _format(name, spec) for name, spec in data["formats"].items()}
            manifest = cls(
                name=str(data.get("name", "")),
                version=str(data.get("version", "")),
                labels=ordered,
                raw_labels=tuple(str(x) for x in data.get("raw_labels") or ordered),
                max_seq_len=int(data["max_seq_len"]),
                tokenizer_path=str(data["tokenizer"]["path"]).rstrip("/"),
                vocab_size=int(data["tokenizer"].get("vocab_size", 0)),
                formats=formats,
                default_format=str(data.get("default_format", "onnx-fp32")),
                files={rel: FileEntry(str(f["sha256"]), int(f["size"])) for rel, f in data["files"].items()},
            )
        except KeyError as err:
            raise ManifestError(f"{where} has no {err.args[0]!r} where readers need one.", _HINT) from None
        except (TypeError, ValueError, AttributeError) as err:
            raise ManifestError(f"{where} holds a field of the wrong type ({err}).", _HINT) from None
        if manifest.default_format not in formats:
            raise ManifestError(f"{where} names default format {manifest.default_format!r}, not one it has.", _HINT)
        return manifest


_HINT = "Re-export the model with `ernie-cls export`; do not edit manifest.json by hand."


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
