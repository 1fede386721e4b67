"""Paddle Inference backend (optional: needs the `train` extra's paddlepaddle). FP32 or the QAT INT8 program."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ernie_cls.errors import ModelLoadError


class PaddleNotInstalledError(ModelLoadError):
    """paddlepaddle is absent (a serve-only install): `verify` skips the Paddle formats instead of failing."""


def _paddle_import_error(err: ImportError) -> Exception:
    """Not installed (the serve extra has no paddle) is not the same fix as installed but broken (e.g. libgomp.so.1
    missing from a slim image): say which."""
    if isinstance(err, ModuleNotFoundError) and (err.name or "").split(".")[0] == "paddle":
        return PaddleNotInstalledError(
            "The Paddle Inference backend needs paddlepaddle, which the serving install does not include.",
            "Install it (`pip install -c constraints.txt paddlepaddle`), or set ERNIE_CLS_FORMAT to an onnx-* format.",
        )
    return ModelLoadError(
        f"paddlepaddle is installed but does not import: {err}.",
        "Install the system library it names (on Debian/Ubuntu images libgomp1 for libgomp.so.1), or set "
        "ERNIE_CLS_FORMAT to an onnx-* format.",
    )


class PaddleInferenceBackend:
    runtime = "paddle-inference"

    def __init__(self, model_json: Path, params: Path, precision: str, threads: int) -> None:
        try:
            from paddle import inference
        except ImportError as err:
            raise _paddle_import_error(err) from err
        config = inference.Config(str(model_json), str(params))
        config.disable_gpu()
        config.set_cpu_math_library_num_threads(threads)
        config.disable_glog_info()
        self.precision = precision
        self._predictor = inference.create_predictor(config)
        self._inputs = [self._predictor.get_input_handle(n) for n in self._predictor.get_input_names()]
        self._output = self._predictor.get_output_handle(self._predictor.get_output_names()[0])

    def infer(self, input_ids: np.ndarray, token_type_ids: np.ndarray) -> np.ndarray:
        for handle, array in zip(self._inputs, (input_ids, token_type_ids), strict=True):
            handle.reshape(array.shape)
            handle.copy_from_cpu(array)
        self._predictor.run()
        return self._output.copy_to_cpu()

    def warmup(self, shapes: list[tuple[int, int]]) -> None:
        for batch, seq in shapes:
            ids = np.full((batch, seq), 5, dtype=np.int64)
            ids[:, 0], ids[:, -1] = 1, 2
            self.infer(ids, np.zeros_like(ids))
