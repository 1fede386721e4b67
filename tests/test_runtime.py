"""ernie_cls.runtime: the one load sequence (service, verify, benchmarks) and its errors."""

from __future__ import annotations

import numpy as np
import pytest

from ernie_cls.artifact import ArtifactError
from ernie_cls.runtime import LoadedModel
from ernie_cls.runtime.paddle_inference import PaddleNotInstalledError, _paddle_import_error


def test_open_verifies_then_loads_the_default_format_with_its_tokenizer(int8_artifact):
    model = LoadedModel.open(int8_artifact, instances=2, warmup=[(1, 8)])
    assert model.format == model.artifact.manifest["default_format"] and len(model.backends) == 2
    ids, types = model.tokenizer(["送餐很快", "太难吃了"])
    logits = model.backends[0].infer(ids, types)
    assert logits.shape == (2, len(model.labels)) and np.isfinite(logits).all()
    assert model.model_sha256 == model.artifact.manifest["files"][model.artifact.path_of(model.format).relative_to(
        model.artifact.root).as_posix()]["sha256"]  # fmt: skip
    with pytest.raises(ArtifactError, match="pinned"):
        LoadedModel.open(int8_artifact, pinned_sha256="0" * 64)
    with pytest.raises(ArtifactError, match="no servable format"):
        LoadedModel.open(int8_artifact, fmt="tensorrt")


def test_paddle_not_installed_and_paddle_broken_get_different_fixes():
    missing = _paddle_import_error(ModuleNotFoundError("No module named 'paddle'", name="paddle"))
    broken = _paddle_import_error(ImportError("libgomp.so.1: cannot open shared object file"))
    assert "needs paddlepaddle" in missing.message and "pip install" in str(missing)
    assert "installed but does not import" in broken.message and "libgomp1" in broken.hint
    # verify skips the Paddle formats of a serve-only install, and fails a broken Paddle: by type, not by wording
    assert isinstance(missing, PaddleNotInstalledError) and not isinstance(broken, PaddleNotInstalledError)
