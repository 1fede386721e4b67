"""ONNX Runtime backend (the default): INT8 or FP32 ONNX model from the artifact, CPU execution provider."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort


class OnnxRuntimeBackend:
    runtime = "onnxruntime"

    def __init__(self, model: Path | bytes, precision: str, threads: int) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.precision = precision
        source = model if isinstance(model, bytes) else str(model)
        self._session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self._output = self._session.get_outputs()[0].name

    def infer(self, input_ids: np.ndarray, token_type_ids: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids, "token_type_ids": token_type_ids}
        return self._session.run([self._output], feeds)[0]

    def warmup(self, shapes: list[tuple[int, int]]) -> None:
        for batch, seq in shapes:
            ids = np.full((batch, seq), 5, dtype=np.int64)
            ids[:, 0], ids[:, -1] = 1, 2
            self.infer(ids, np.zeros_like(ids))
