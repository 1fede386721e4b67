"""Queue + dynamic batcher. Imports neither FastAPI nor a model runtime."""

from service.batching.batcher import (
    Batcher,
    ClientGoneError,
    DeadlineExceededError,
    InferenceError,
    InferenceTimeoutError,
    ModelStuckError,
    QueueFullError,
    ShuttingDownError,
)

__all__ = [
    "Batcher",
    "ClientGoneError",
    "DeadlineExceededError",
    "InferenceError",
    "InferenceTimeoutError",
    "ModelStuckError",
    "QueueFullError",
    "ShuttingDownError",
]
