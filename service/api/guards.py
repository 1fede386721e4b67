"""ASGI middleware in front of every route: request id, API key, content type, body size and read time, in-flight
cap, and the response headers every reply carries.

    request -> id (X-Request-ID or generated) -> /healthz, /readyz, /metrics? straight through
      -> in-flight cap (503 + Retry-After past ERNIE_CLS_MAX_CONCURRENT_REQUESTS)
      -> admin key on /v1/admin/* (403 with no admin keys set), API key on the rest of /v1/* (one Bearer header,
         compared as raw bytes in constant time)
      -> content type (415) -> Content-Length (400 if not a number, 413 over the limit)
      -> body stream: past the limit -> PayloadTooLargeError; not complete within body_timeout_s -> 408
      -> the app; every reply gets X-Request-ID, X-Process-Time-Ms, and `Connection: close` while draining
         (a client that does not read its reply: service/http_protocol.py aborts the connection)

Pure ASGI, not BaseHTTPMiddleware: it must see the body stream to stop a chunked upload that grows past the limit
without buffering it, and it must not break request-disconnect detection. Errors past the body limit or the body
timeout are *raised* from receive() on every call, never turned into a synthetic end of body: an app that read a
valid JSON prefix must not go on to classify it, and a disconnect watcher must not spin on instant replies.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import pydantic_core

from ernie_cls.errors import ErnieClsError
from service.api.watchdog import Watchdog
from service.errors import (
    AdminDisabledError,
    BadRequestError,
    BodyTimeoutError,
    OverloadedError,
    PayloadTooLargeError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
    error_parts,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

API_PREFIX = "/v1/"
ADMIN_PREFIX = "/v1/admin/"  # reload / rollback: ERNIE_CLS_ADMIN_KEYS, and off without them
OPERATIONS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
MAX_CONTENT_LENGTH_DIGITS = 18  # int() of longer strings is slow and no body that long is accepted anyway


def key_matches(token: bytes, keys: list[bytes]) -> bool:
    """A raw `Authorization` value against every configured key (UTF-8 bytes), each compared in constant time."""
    presented = token[7:] if token[:7].lower() == b"bearer " else b""
    return any(hmac.compare_digest(presented, k) for k in keys)


def check_key(raw_headers: list[tuple[bytes, bytes]], keys: list[bytes]) -> None:
    """Raise UnauthorizedError unless exactly one Authorization header carries a configured key."""
    values = [v for k, v in raw_headers if k.lower() == b"authorization"]
    if len(values) > 1:
        raise UnauthorizedError("The request has several Authorization headers.", "Send exactly one.")
    if not values or not key_matches(values[0], keys):
        raise UnauthorizedError()


def ascii_int(raw: str, max_digits: int) -> int | None:
    """`raw` as a non-negative integer if it is 1..max_digits ASCII digits, else None (str.isdigit() accepts "²")."""
    if not raw or len(raw) > max_digits or not (raw.isascii() and raw.isdigit()):
        return None
    return int(raw)


class InFlight:
    """API requests in progress, shared by the guards in front of the fast path and of FastAPI (one cap)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.count = limit, 0


class GuardMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        on_response: Callable[[Scope, int], None] | None = None,
        keys: list[bytes] | None = None,
        admin_keys: list[bytes] | None = None,
        body_timeout_s: float = 10.0,
        in_flight: InFlight | None = None,
        draining: Callable[[], bool] = lambda: False,
        on_refused: Callable[[Scope, ErnieClsError], None] | None = None,
    ) -> None:
        self.app = app
        self.on_refused = on_refused  # the guard answered itself (key, type, size, in-flight cap): e.g. the request log
        self.max_body_bytes = max_body_bytes
        self.on_response = on_response
        self.keys = keys or []
        self.admin_keys = admin_keys or []
        self.body_timeout_s = body_timeout_s
        self.in_flight = in_flight or InFlight(0)  # limit 0: no cap
        self.draining = draining
        self.watchdog = Watchdog()
        # Generated ids: a random per-process prefix and a counter (unique, and cheaper than a uuid4 per request).
        prefix = uuid.uuid4().hex[:16]
        self._ids = (f"{prefix}{n:016x}" for n in itertools.count())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        raw_headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw_headers}
        request_id = headers.get("x-request-id", "")[:128]
        if not request_id or not (request_id.isascii() and request_id.isprintable()):
            request_id = next(self._ids)
        scope.setdefault("state", {})["request_id"] = request_id
        body = _BodyReader(receive, self.max_body_bytes, self.body_timeout_s, expects_body(headers), self.watchdog)
        replied = False

        async def send_with_headers(message: Message) -> None:
            nonlocal replied
            if message["type"] == "http.response.start":
                replied = True
                if self.on_response is not None:
                    self.on_response(scope, message["status"])
                extra = [
                    (b"x-request-id", request_id.encode("latin-1")),
                    (b"x-process-time-ms", f"{(time.perf_counter() - started) * 1000:.2f}".encode()),
                ]
                # Draining: the client must open its next request's connection elsewhere. A body left unread is not
                # a reason to close: uvicorn discards the rest (bounded by service/http_protocol.py's deadline),
                # whereas closing a socket with unread data sends a reset that destroys this reply (the 413).
                if self.draining():
                    extra.append((b"connection", b"close"))
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)  # a client that does not read: service/http_protocol.py's write deadline

        path = scope["path"].removeprefix(scope.get("root_path", "")) or "/"
        if path in OPERATIONS_PATHS:  # never counted, so probes and scrapes answer whatever the load
            await self.app(scope, receive, send_with_headers)
            return
        in_flight = self.in_flight
        if in_flight.limit and in_flight.count >= in_flight.limit:
            await self._refuse(scope, send_with_headers, OverloadedError(in_flight.limit))
            return
        in_flight.count += 1
        try:
            self._admit(scope, path, headers)
            await self.app(scope, body.receive, send_with_headers)
        except ErnieClsError as err:  # refused here, or raised by body.receive and not mapped by the app
            if replied:
                raise
            await self._refuse(scope, send_with_headers, err)
        finally:
            in_flight.count -= 1

    async def _refuse(self, scope: Scope, send: Send, err: ErnieClsError) -> None:
        await respond_error(send, err)
        if self.on_refused is not None:
            self.on_refused(scope, err)

    def _admit(self, scope: Scope, path: str, headers: dict[str, str]) -> None:
        """The checks that need no body: API key, content type, declared length. Raises ErnieClsError."""
        if path.startswith(ADMIN_PREFIX):  # its own keys, never the clients' ones; no body to check
            if not self.admin_keys:
                raise AdminDisabledError()
            check_key(scope.get("headers", []), self.admin_keys)
            return
        if self.keys and path.startswith(API_PREFIX):
            check_key(scope.get("headers", []), self.keys)
        if scope["method"] in ("POST", "PUT", "PATCH") and not _is_json(headers.get("content-type", "")):
            raise UnsupportedMediaTypeError()
        declared = headers.get("content-length")
        if declared is not None:
            length = ascii_int(declared, MAX_CONTENT_LENGTH_DIGITS)
            if length is None:
                raise BadRequestError("Content-Length is not a number.", "Send the body's length in bytes.")
            if length > self.max_body_bytes:
                raise PayloadTooLargeError(self.max_body_bytes)


def expects_body(headers: dict[str, str]) -> bool:
    return headers.get("content-length", "0") != "0" or "transfer-encoding" in headers


class _BodyReader:
    """The request's receive(), with the size limit and the read deadline applied while the body streams."""

    def __init__(self, receive: Receive, limit: int, timeout_s: float, expected: bool, watchdog: Watchdog) -> None:
        self._receive, self.limit, self.timeout_s, self.watchdog = receive, limit, timeout_s, watchdog
        self.received = 0
        self.complete = not expected
        self.failed: ErnieClsError | None = None
        self.deadline: float | None = None  # loop time by which the whole body must have arrived

    async def receive(self) -> Message:
        if self.failed is not None:  # every later call fails the same way: nothing can wait on a cut body
            raise self.failed
        if self.complete:  # the body is read: what is left is the disconnect, which may take for ever
            return await self._receive()
        loop = asyncio.get_running_loop()
        if self.deadline is None:
            self.deadline = loop.time() + self.timeout_s
        try:
            message = await self.watchdog.run(self._receive(), self.deadline - loop.time())
        except TimeoutError:
            self.failed = BodyTimeoutError(self.timeout_s)
            raise self.failed from None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                self.failed = PayloadTooLargeError(self.limit)
                raise self.failed
            self.complete = not message.get("more_body", False)
        return message


async def respond_error(send: Send, err: ErnieClsError) -> None:
    status, body, headers = error_parts(err)
    await respond(send, status, pydantic_core.to_json(body), headers)


async def respond(send: Send, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode(), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")
