"""The backend contract: what the batcher needs from a model runtime, nothing more.

Lifecycle: 1. construct (loads the model)  2. warmup(shapes)  3. infer(batch) -> logits, many times, from worker
threads. Health is the batcher's business (failed and timed-out calls), not the backend's. Implementations import
their runtime only in their own module.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Backend(Protocol):
    runtime: str  # "onnxruntime" | "paddle-inference"
    precision: str  # "fp32" | "int8" | "int8-simulated"

    def infer(self, input_ids: np.ndarray, token_type_ids: np.ndarray) -> np.ndarray:
        """int64 [batch, seq] x2 -> float32 logits [batch, labels]. Called from a worker thread."""
        ...

    def warmup(self, shapes: list[tuple[int, int]]) -> None:
        """Run once per (batch, seq) shape so first requests do not pay for allocation and kernel selection."""
        ...
