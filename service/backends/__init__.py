"""Backends behind one small protocol (base.Backend); `load_backend` picks one for an artifact format."""

from __future__ import annotations

from ernie_cls.artifact import Artifact, ArtifactError, inside
from service.backends.base import Backend


def load_backend(artifact: Artifact, fmt: str, threads: int) -> Backend:
    spec = artifact.manifest["formats"].get(fmt)
    if spec is None or spec.get("runtime") not in ("onnxruntime", "paddle-inference"):
        servable = [
            f
            for f, s in artifact.manifest["formats"].items()
            if s.get("runtime") in ("onnxruntime", "paddle-inference")
        ]
        raise ArtifactError(
            f"The artifact has no servable format {fmt!r}.", f"Set ERNIE_CLS_FORMAT to one of {servable}."
        )
    if spec["runtime"] == "onnxruntime":
        from service.backends.onnxruntime import OnnxRuntimeBackend

        # The bytes that were hashed are the bytes loaded (no re-open by path after the check).
        return OnnxRuntimeBackend(artifact.read_verified(spec["path"]), spec["precision"], threads)
    from service.backends.paddle_inference import PaddleInferenceBackend

    return PaddleInferenceBackend(
        inside(artifact.root, spec["path"]), inside(artifact.root, spec["params"]), spec["precision"], threads
    )


__all__ = ["Backend", "load_backend"]
