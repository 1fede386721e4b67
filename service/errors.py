"""The service's error table: the project hierarchy (ernie_cls.errors) plus HTTP-only cases, each with its status,
message, hint and the response headers it needs; `error_parts` turns any of them into a reply (both the ASGI fast
path and FastAPI's handlers use it, so every route answers an error the same way).

The batcher raises the queue's and the model's errors (queue full 429, deadline 504, inference 500/504, model stuck
and shutting down 503); they are defined here, with the others, so that every status and hint is in one table.
"""

from __future__ import annotations

import re
from typing import Any

from ernie_cls.errors import ErnieClsError, UserInputError

RETRY_AFTER_NOT_READY_S = 5


# ----------------------------------------------------------------------------- the queue and the model (batcher)
class QueueFullError(ErnieClsError):
    http_status = 429

    def __init__(self, retry_after_s: float) -> None:
        self.retry_after_s = retry_after_s
        self.response_headers = (("Retry-After", str(int(retry_after_s))),)
        super().__init__(
            "The service is at capacity.", f"Retry after {retry_after_s:.0f} s, or send fewer texts per second."
        )


class DeadlineExceededError(ErnieClsError):
    http_status = 504

    def __init__(self) -> None:
        super().__init__(
            "The request's deadline passed before it could be processed; the work was not done.",
            "Retry later, or allow more time with the X-Request-Timeout-Ms header.",
        )


class InferenceTimeoutError(ErnieClsError):
    http_status = 504

    def __init__(self, timeout_s: float) -> None:
        super().__init__(
            f"Inference took longer than {timeout_s:.0f} s and was abandoned for this batch.",
            "Retry; if it persists, the model is overloaded or stuck: check the service logs and /readyz.",
        )


class ModelStuckError(ErnieClsError):
    http_status = 503
    response_headers = (("Retry-After", "5"),)

    def __init__(self, timeout_s: float) -> None:
        super().__init__(
            f"Every model instance is stuck in a call that has run longer than {timeout_s:g} s.",
            "Retry later or on another replica; /readyz is 503 until an instance returns. Check the service logs.",
        )


class ShuttingDownError(ErnieClsError):
    http_status = 503
    response_headers = (("Retry-After", "1"),)

    def __init__(self) -> None:
        super().__init__(
            "The service stopped before this text could be classified.", "Retry: another replica will answer."
        )


class InferenceError(ErnieClsError):
    http_status = 500

    def __init__(self) -> None:
        super().__init__(
            "Inference failed for this batch.",
            "Retry; if it persists, report this reply's X-Request-ID (it is logged).",
        )


class ClientGoneError(ErnieClsError):
    """The client disconnected before its answer (499, nginx's code; nobody reads it)."""

    http_status = 499

    def __init__(self) -> None:
        super().__init__("Client disconnected.", "Keep the connection open until the answer arrives.")


# ----------------------------------------------------------------------------- the request


class UnauthorizedError(ErnieClsError):
    http_status = 401
    response_headers = (("WWW-Authenticate", "Bearer"),)

    def __init__(
        self,
        message: str = "Missing or wrong API key.",
        hint: str = "Send `Authorization: Bearer <key>` with a key from ERNIE_CLS_API_KEYS.",
    ) -> None:
        super().__init__(message, hint)


class BadRequestError(ErnieClsError):
    http_status = 400


class BodyTimeoutError(ErnieClsError):
    http_status = 408

    def __init__(self, timeout_s: float) -> None:
        super().__init__(
            f"The request body did not arrive within {timeout_s:g} s.",
            "Send the whole body at once; a slow link needs a larger ERNIE_CLS_BODY_TIMEOUT_S on the server.",
        )


class PayloadTooLargeError(ErnieClsError):
    http_status = 413

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"The request body is larger than {limit} bytes.",
            "Send fewer or shorter texts per request (see max_texts_per_request and max_chars_per_text).",
        )


class UnsupportedMediaTypeError(ErnieClsError):
    http_status = 415

    def __init__(self) -> None:
        super().__init__("The body must be JSON.", "Send the header `Content-Type: application/json`.")


class InvalidJsonError(ErnieClsError):
    """A body json.loads gave up on other than by a syntax error (FastAPI answers those 400; we say why, 422)."""

    http_status = 422


class NotReadyError(ErnieClsError):
    http_status = 503
    response_headers = (("Retry-After", str(RETRY_AFTER_NOT_READY_S)),)

    def __init__(self, reason: str) -> None:
        super().__init__(f"The service is not ready ({reason}).", "Retry shortly; GET /readyz reports readiness.")


class OverloadedError(ErnieClsError):
    http_status = 503
    response_headers = (("Retry-After", "1"),)

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"The service is handling {limit} requests already.",
            "Retry after the Retry-After header's seconds, or raise ERNIE_CLS_MAX_CONCURRENT_REQUESTS.",
        )


# ----------------------------------------------------------------------------- several models, reload, admin
class NoSuchModelError(ErnieClsError):
    http_status = 404

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"There is no model {name!r}.", f"Use one of: {', '.join(known)} (GET /v1/models lists them).")


class ReloadError(ErnieClsError):
    """A reload or rollback that did not happen (already running, nothing to roll back to, the new set failed to
    load or verify): the models that were serving still are."""

    http_status = 409


class AdminDisabledError(ErnieClsError):
    http_status = 403

    def __init__(self) -> None:
        super().__init__(
            "The admin API is off.", "Set ERNIE_CLS_ADMIN_KEYS and send `Authorization: Bearer <admin key>`."
        )


class ExplainLimitError(ErnieClsError):
    """/explain costs one model call per character: one text, bounded length, a few at a time."""

    http_status = 429
    response_headers = (("Retry-After", "1"),)


def error_body(kind: str, message: str, hint: str = "", details: object = None) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message, "hint": hint, "details": details}}


def error_parts(err: ErnieClsError) -> tuple[int, dict[str, Any], dict[str, str]]:
    """An ErnieClsError -> (status, body, extra headers): its http_status, a snake_case type, message and hint."""
    headers = dict(err.response_headers)
    kind = re.sub(r"(?<!^)(?=[A-Z])", "_", type(err).__name__.removesuffix("Error")).lower()
    return err.http_status, error_body(kind, err.message, err.hint), headers


__all__ = [
    "AdminDisabledError",
    "BadRequestError",
    "BodyTimeoutError",
    "ClientGoneError",
    "DeadlineExceededError",
    "ErnieClsError",
    "ExplainLimitError",
    "InferenceError",
    "InferenceTimeoutError",
    "InvalidJsonError",
    "ModelStuckError",
    "NoSuchModelError",
    "NotReadyError",
    "OverloadedError",
    "PayloadTooLargeError",
    "QueueFullError",
    "ReloadError",
    "ShuttingDownError",
    "UnauthorizedError",
    "UnsupportedMediaTypeError",
    "UserInputError",
    "error_body",
    "error_parts",
]
