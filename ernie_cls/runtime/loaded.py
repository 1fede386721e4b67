"""One load sequence for an exported artifact (see the package docstring)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ernie_cls.artifact import Artifact, ArtifactError, inside, verify_artifact
from ernie_cls.runtime.base import Backend
from ernie_cls.tokenization import ErnieTokenizerFast

# Formats a runtime here can load, in the order reports list them. `onnx-int8-cpu` (QOperator INT8) is no longer
# exported (one QDQ file now serves CPU and TensorRT) but artifacts from before still load, so rollback keeps working.
RUNTIME_FORMATS = ("paddle-fp32", "paddle-int8", "onnx-fp32", "onnx-int8", "onnx-int8-cpu")
RUNTIMES = ("onnxruntime", "paddle-inference")
WARMUP_SHAPES = [(1, 16), (1, 64), (8, 32), (32, 32), (32, 128)]  # (batch, sequence) run once at start


@dataclass(frozen=True)
class LoadedModel:
    artifact: Artifact
    format: str
    tokenizer: ErnieTokenizerFast
    backends: list[Backend]  # one per model instance, all alike

    @classmethod
    def open(
        cls,
        root: str | Path,
        fmt: str | None = None,
        threads: int = 1,
        instances: int = 1,
        pinned_sha256: str | None = None,
        warmup: list[tuple[int, int]] | None = None,
    ) -> LoadedModel:
        """Verify the artifact at `root`, then load it (`from_artifact`). Raises ArtifactError / ModelLoadError."""
        return cls.from_artifact(verify_artifact(root, pinned_sha256), fmt, threads, instances, warmup)

    @classmethod
    def from_artifact(
        cls,
        artifact: Artifact,
        fmt: str | None = None,
        threads: int = 1,
        instances: int = 1,
        warmup: list[tuple[int, int]] | None = None,
    ) -> LoadedModel:
        """An artifact already verified -> tokenizer + `instances` backends of `fmt` (default: the manifest's)."""
        fmt = fmt or artifact.spec.default_format
        tokenizer = load_tokenizer(artifact)
        backends = load_backends(artifact, fmt, threads, instances)
        for backend in backends:
            if warmup:
                backend.warmup(warmup)
        return cls(artifact, fmt, tokenizer, backends)

    @property
    def labels(self) -> list[str]:
        return self.artifact.labels

    @property
    def temperature(self) -> float:
        """Temperature scaling fitted at export (1.0 for artifacts written before it existed)."""
        return self.artifact.format_spec(self.format).temperature

    @property
    def model_sha256(self) -> str:
        return self.artifact.spec.files[self.artifact.format_spec(self.format).path].sha256


def load_tokenizer(artifact: Artifact) -> ErnieTokenizerFast:
    """The artifact's tokenizer from bytes checked against the manifest (files it does not list are absent)."""
    directory = artifact.spec.tokenizer_path
    listed = artifact.spec.files

    def read(name: str) -> bytes | None:
        rel = f"{directory}/{name}"
        return artifact.read_verified(rel) if rel in listed else None

    return ErnieTokenizerFast.load(artifact.root / directory, read=read)


def load_backend(artifact: Artifact, fmt: str, threads: int) -> Backend:
    """One model instance of format `fmt`."""
    return load_backends(artifact, fmt, threads, 1)[0]


def load_backends(artifact: Artifact, fmt: str, threads: int, instances: int) -> list[Backend]:
    """`instances` model instances of format `fmt`. ONNX models load from the bytes that were hashed, read once for
    all instances (no re-open by path after the check); the Paddle program loads by path, after its hash check,
    from inside the artifact."""
    spec = artifact.spec.formats.get(fmt)
    if spec is None or spec.runtime not in RUNTIMES:
        servable = [f for f, s in artifact.spec.formats.items() if s.runtime in RUNTIMES]
        raise ArtifactError(
            f"The artifact has no servable format {fmt!r}.", f"Set ERNIE_CLS_FORMAT to one of {servable}."
        )
    if spec.runtime == "onnxruntime":
        from ernie_cls.runtime.onnxruntime import OnnxRuntimeBackend

        model = artifact.read_verified(spec.path)
        return [OnnxRuntimeBackend(model, spec.precision, threads) for _ in range(instances)]
    from ernie_cls.runtime.paddle_inference import PaddleInferenceBackend

    if spec.params is None:
        raise ArtifactError(
            f"The format {fmt!r} names no parameters file.", "Re-export the model with `ernie-cls export`."
        )
    program, params = inside(artifact.root, spec.path), inside(artifact.root, spec.params)
    return [PaddleInferenceBackend(program, params, spec.precision, threads) for _ in range(instances)]
