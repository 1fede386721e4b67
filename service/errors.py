"""The service's errors: the project hierarchy (ernie_cls.errors) plus HTTP-only cases, each with its status.

Mapped to responses in one handler (service/main.py). The batcher's own errors (queue full 429, deadline 504,
inference 500, client gone 499) live beside it in service/batching and are re-exported here.
"""

from __future__ import annotations

from ernie_cls.errors import ErnieClsError, UserInputError
from service.batching.batcher import (
    ClientGoneError,
    DeadlineExceededError,
    InferenceError,
    InferenceTimeoutError,
    QueueFullError,
)


class UnauthorizedError(ErnieClsError):
    http_status = 401

    def __init__(self) -> None:
        super().__init__(
            "Missing or wrong API key.", "Send `Authorization: Bearer <key>` with a key from ERNIE_CLS_API_KEYS."
        )


class UnsupportedMediaTypeError(ErnieClsError):
    http_status = 415

    def __init__(self) -> None:
        super().__init__("The body must be JSON.", "Send the header `Content-Type: application/json`.")


class NotReadyError(ErnieClsError):
    http_status = 503

    def __init__(self, reason: str) -> None:
        super().__init__(f"The service is not ready ({reason}).", "Retry shortly; GET /readyz reports readiness.")


__all__ = [
    "ClientGoneError",
    "DeadlineExceededError",
    "ErnieClsError",
    "InferenceError",
    "InferenceTimeoutError",
    "NotReadyError",
    "QueueFullError",
    "UnauthorizedError",
    "UnsupportedMediaTypeError",
    "UserInputError",
]
