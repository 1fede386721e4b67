"""The exported artifact format: `manifest.json` written by training, read and verified by serving.

    exported/<name>/
        manifest.json         schema version, labels, max_seq_len, I/O spec, formats, files + sha256, metrics,
                              export-time checks, provenance
        tokenizer/            the tokenizer files (see tokenizers/README.md)
        paddle/fp32/          Paddle inference model (model.json + model.pdiparams)
        onnx/model.fp32.onnx  ONNX FP32
        ...                   further formats as the manifest lists them

Every file of the artifact except the manifest itself is listed with its sha256 and size; `verify_artifact`
recomputes them, so a tampered, truncated or missing file is detected before anything is loaded.
Paddle-free: the service imports this.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ernie_cls.errors import ErnieClsError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"


class ArtifactError(ErnieClsError):
    """The artifact is incomplete, tampered with, or from an unsupported schema."""

    http_status = 503


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_table(root: Path) -> dict[str, dict[str, Any]]:
    """{relative path: {sha256, size}} for every file under root except the manifest, sorted."""
    table = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel != MANIFEST:
            table[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return table


def write_manifest(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Fill in schema version and the file table, then write manifest.json (last, after every other file)."""
    full = {"schema_version": SCHEMA_VERSION, **manifest, "files": file_table(root)}
    (root / MANIFEST).write_text(json.dumps(full, ensure_ascii=False, indent=2), encoding="utf-8")
    return full


@dataclass
class Artifact:
    root: Path
    manifest: dict[str, Any]

    @property
    def labels(self) -> list[str]:
        labels = self.manifest["labels"]
        return [labels[str(i)] for i in range(len(labels))]

    @property
    def max_seq_len(self) -> int:
        return int(self.manifest["max_seq_len"])

    def path_of(self, fmt: str) -> Path:
        formats = self.manifest.get("formats", {})
        if fmt not in formats:
            raise ArtifactError(
                f"The artifact {self.root} has no format {fmt!r}; it has {sorted(formats)}.",
                "Choose one of those formats, or re-export the model with the format you need.",
            )
        return self.root / formats[fmt]["path"]


def read_manifest(root: str | Path) -> Artifact:
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise ArtifactError(
            f"{root} is not an ernie-cls artifact: {MANIFEST} is missing.",
            "Point at a directory written by `ernie-cls export` (e.g. exported/<name>).",
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path} is not valid JSON ({err}).", "Re-export the model.") from None
    version = manifest.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ArtifactError(
            f"{path} has schema version {version!r}; this ernie-cls reads versions up to {SCHEMA_VERSION}.",
            "Upgrade ernie-cls to the version that exported the model, or re-export it with this one.",
        )
    return Artifact(root, manifest)


def verify_artifact(root: str | Path) -> Artifact:
    """Read the manifest and check every listed file's size and sha256. Raises ArtifactError naming the files."""
    artifact = read_manifest(root)
    problems = []
    for rel, expected in artifact.manifest.get("files", {}).items():
        path = artifact.root / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif path.stat().st_size != expected["size"] or sha256_file(path) != expected["sha256"]:
            problems.append(f"{rel}: sha256 mismatch (modified or corrupted)")
    if not artifact.manifest.get("files"):
        problems.append("the manifest lists no files")
    if problems:
        raise ArtifactError(
            f"Artifact {artifact.root} failed verification: {'; '.join(problems)}.",
            "Do not serve it. Restore the artifact from its source or re-run `ernie-cls export`.",
        )
    return artifact
