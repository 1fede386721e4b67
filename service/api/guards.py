"""ASGI middleware: request size limit (413 before the body is read), request id and timing headers.

Pure ASGI, not BaseHTTPMiddleware: it must see the body stream to stop a chunked upload that grows past the limit
without buffering it, and it must not break request-disconnect detection.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def error_body(kind: str, message: str, hint: str = "") -> bytes:
    return json.dumps({"error": {"type": kind, "message": message, "hint": hint, "details": None}}).encode()


class GuardMiddleware:
    def __init__(
        self, app: ASGIApp, max_body_bytes: int, on_response: Callable[[Scope, int], None] | None = None
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.on_response = on_response
        # Generated ids: a random per-process prefix and a counter (unique, and cheaper than a uuid4 per request).
        prefix = uuid.uuid4().hex[:16]
        self._ids = (f"{prefix}{n:016x}" for n in itertools.count())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        request_id = headers.get("x-request-id", "")[:128]
        if not request_id or not request_id.isprintable():
            request_id = next(self._ids)
        scope.setdefault("state", {})["request_id"] = request_id
        limit = self.max_body_bytes

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                if self.on_response is not None:
                    self.on_response(scope, message["status"])
                extra = [
                    (b"x-request-id", request_id.encode("latin-1")),
                    (b"x-process-time-ms", f"{(time.perf_counter() - started) * 1000:.2f}".encode()),
                ]
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        if scope["method"] in ("POST", "PUT", "PATCH") and not _is_json(headers.get("content-type", "")):
            body = error_body(
                "unsupported_media_type", "The body must be JSON.", "Send the header `Content-Type: application/json`."
            )
            await _respond(send_with_headers, 415, body)
            return

        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await self._reject(send_with_headers, limit)
            return

        received = 0
        too_large = False

        async def limited_receive() -> Message:
            # Past the limit, end the body stream here (nothing more is read) and remember to answer 413.
            nonlocal received, too_large
            if too_large:
                return {"type": "http.request", "body": b"", "more_body": False}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    too_large = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        replaced = False

        async def guarded_send(message: Message) -> None:
            # Whatever the app made of a cut-off body, the client gets the 413.
            nonlocal replaced
            if too_large:
                if not replaced:
                    replaced = True
                    await self._reject(send_with_headers, limit)
                return
            await send_with_headers(message)

        await self.app(scope, limited_receive, guarded_send)

    @staticmethod
    async def _reject(send: Send, limit: int) -> None:
        body = error_body(
            "payload_too_large",
            f"The request body is larger than {limit} bytes.",
            "Send fewer or shorter texts per request (see max_texts_per_request and max_chars_per_text).",
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


async def _respond(send: Send, status: int, body: bytes, close: bool = False) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:  # the rest of the body is not read: the connection cannot be reused
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
