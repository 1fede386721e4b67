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

from ernie_cls.errors import ArtifactError
from ernie_cls.manifest import FormatSpec, Manifest

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"


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
    manifest: dict[str, Any]  # the JSON document as written, report data included
    spec: Manifest  # the typed contract every reader relies on, checked when read (ernie_cls/manifest.py)
    manifest_sha256: str = ""  # of manifest.json's bytes as read: the value to pin (ERNIE_CLS_ARTIFACT_SHA256)

    @property
    def labels(self) -> list[str]:
        return list(self.spec.labels)

    @property
    def max_seq_len(self) -> int:
        return self.spec.max_seq_len

    def format_spec(self, fmt: str) -> FormatSpec:
        if fmt not in self.spec.formats:
            raise ArtifactError(
                f"The artifact {self.root} has no format {fmt!r}; it has {sorted(self.spec.formats)}.",
                "Choose one of those formats, or re-export the model with the format you need.",
            )
        return self.spec.formats[fmt]

    def path_of(self, fmt: str) -> Path:
        return self.root / self.format_spec(fmt).path

    def read_verified(self, rel: str) -> bytes:
        """The bytes of a file the manifest lists, read once and checked against its sha256: load these, not the
        path (the file could be replaced between a check by path and a load by path)."""
        expected = self.spec.files.get(rel)
        if expected is None:
            raise ArtifactError(
                f"{rel} is not in the manifest's file table of {self.root}, so it cannot be verified.",
                "Re-export the model with `ernie-cls export`; do not add files to an artifact by hand.",
            )
        data = inside(self.root, rel).read_bytes()
        if hashlib.sha256(data).hexdigest() != expected.sha256:
            raise ArtifactError(
                f"{self.root / rel} changed since it was verified (sha256 mismatch).",
                "Do not serve it. Restore the artifact from its source or re-run `ernie-cls export`.",
            )
        return data


def inside(root: Path, rel: str) -> Path:
    """root / rel, refusing a path that is absolute, has a `..` part or resolves (symlinks) outside root."""
    escapes = not rel or Path(rel).is_absolute() or ".." in Path(rel).parts or "\\" in rel
    if escapes or not (root / rel).resolve().is_relative_to(root.resolve()):
        raise ArtifactError(
            f"The manifest of {root} names the path {rel!r}, which leaves the artifact directory.",
            "Do not serve it: artifacts written by `ernie-cls export` only name files inside themselves.",
        )
    return root / rel


def read_manifest(root: str | Path, pinned_sha256: str | None = None) -> Artifact:
    """Parse manifest.json. With `pinned_sha256`, refuse a manifest whose bytes hash to anything else."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise ArtifactError(
            f"{root} is not an ernie-cls artifact: {MANIFEST} is missing.",
            "Point at a directory written by `ernie-cls export` (e.g. exported/<name>).",
        )
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if pinned_sha256 is not None and digest != pinned_sha256.strip().lower():
        raise ArtifactError(
            f"{path} has sha256 {digest}, not the pinned {pinned_sha256.strip()}: the manifest was changed or "
            "this is another artifact.",
            "Deploy the artifact you pinned, or pin this one (`ernie-cls verify` and `export` print its sha256).",
        )
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path} is not valid JSON ({err}).", "Re-export the model.") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path} is not a JSON object.", "Re-export the model.")
    version = manifest.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ArtifactError(
            f"{path} has schema version {version!r}; this ernie-cls reads versions up to {SCHEMA_VERSION}.",
            "Upgrade ernie-cls to the version that exported the model, or repin and re-export it with this one.",
        )
    return Artifact(root, manifest, Manifest.parse(manifest, str(path)), digest)


def verify_artifact(root: str | Path, pinned_sha256: str | None = None) -> Artifact:
    """Read the manifest (checked against `pinned_sha256` if given) and check every listed file's path, size and
    sha256. Raises ArtifactError naming the files."""
    artifact = read_manifest(root, pinned_sha256)
    problems = []
    files = artifact.spec.files
    if not files:
        raise ArtifactError(
            f"Artifact {artifact.root} failed verification: the manifest lists no files.",
            "Do not serve it. Restore the artifact from its source or re-run `ernie-cls export`.",
        )
    for rel, expected in files.items():
        path = inside(artifact.root, rel)
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif path.stat().st_size != expected.size or sha256_file(path) != expected.sha256:
            problems.append(f"{rel}: sha256 mismatch (modified or corrupted)")
    if problems:
        raise ArtifactError(
            f"Artifact {artifact.root} failed verification: {'; '.join(problems)}.",
            "Do not serve it. Restore the artifact from its source or re-run `ernie-cls export`.",
        )
    return artifact
