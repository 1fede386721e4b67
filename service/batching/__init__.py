"""Queue + dynamic batcher. Imports neither FastAPI nor a model runtime; its errors are in service/errors.py."""

from service.batching.batcher import Batcher
from service.errors import (
    DeadlineExceededError,
    InferenceError,
    InferenceTimeoutError,
    ModelStuckError,
    QueueFullError,
    ShuttingDownError,
)

__all__ = [
    "Batcher",
    "DeadlineExceededError",
    "InferenceError",
    "InferenceTimeoutError",
    "ModelStuckError",
    "QueueFullError",
    "ShuttingDownError",
]
