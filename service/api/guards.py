"""ASGI middleware: request size limit (413 before the body is read), request id and timing headers.

Pure ASGI, not BaseHTTPMiddleware: it must see the body stream to stop a chunked upload that grows past the limit
without buffering it, and it must not break request-disconnect detection.
"""

from __future__ import annotations

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


class BodyTooLargeError(Exception):
    pass


class GuardMiddleware:
    def __init__(
        self, app: ASGIApp, max_body_bytes: int, on_response: Callable[[Scope, int], None] | None = None
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.on_response = on_response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        request_id = headers.get("x-request-id", "")[:128] or uuid.uuid4().hex
        if not request_id.isprintable():
            request_id = uuid.uuid4().hex
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

        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await self._reject(send_with_headers, limit)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLargeError
            return message

        response_started = False

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send_with_headers(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLargeError:
            if not response_started:
                await self._reject(send_with_headers, limit)

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
