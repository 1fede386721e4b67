"""uvicorn's HTTP protocols with a request-header deadline (slowloris) and a write deadline (slow readers).

uvicorn 0.54 has neither. Its only timer, keep-alive, is armed after a response and cancelled by any byte received,
so a connection that never sends a byte, sends half its headers, or trickles a body the app did not read stays open
for ever (checked on both parsers). And a client that stops reading makes the reply's send() wait for ever, holding
the request's task, its in-flight slot and the connection (uvicorn's shutdown then waits for it too). These
subclasses close a connection whose request headers are not complete `header_timeout_s` after it opened or after its
request began (silently if it sent nothing, with a 408 otherwise), and abort one whose writing has been paused by
flow control for `write_timeout_s`. Both timers exist only while something is late: a request that arrives in one
read and a reply the client reads cost no timer. The slow *body* is bounded by service/api/guards.py
(ERNIE_CLS_BODY_TIMEOUT_S).

Workaround for a missing uvicorn feature, isolated here; tests/test_http_protocol.py shows the gap on plain uvicorn,
so it fails (and this module can go) once uvicorn closes such connections itself.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.errors import error_body

_BODY = json.dumps(
    error_body(
        "request_timeout",
        "The request headers did not arrive in time.",
        "Send the whole request at once (the server closes slow connections).",
    )
).encode()
REQUEST_TIMEOUT_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    + f"content-length: {len(_BODY)}\r\nconnection: close\r\n\r\n".encode()
    + _BODY
)


class _Deadlines:
    """The timers both protocol subclasses share."""

    header_timeout_s: float = 10.0
    write_timeout_s: float = 30.0
    loop: asyncio.AbstractEventLoop
    transport: Any
    cycle: Any
    _deadline: asyncio.TimerHandle | None = None  # request headers
    _write_deadline: asyncio.TimerHandle | None = None  # writing paused by flow control

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._cancel_write_deadline()
        super().connection_lost(exc)  # type: ignore[misc]

    def pause_writing(self) -> None:  # the client is not reading what we send
        super().pause_writing()  # type: ignore[misc]
        if self._write_deadline is None:
            self._write_deadline = self.loop.call_later(self.write_timeout_s, self._abort_stalled)

    def resume_writing(self) -> None:
        super().resume_writing()  # type: ignore[misc]
        self._cancel_write_deadline()

    def _cancel_write_deadline(self) -> None:
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None

    def _abort_stalled(self) -> None:
        # abort, not close: close() waits for the send buffer to drain, which a client that does not read never lets.
        # The reply's sender is told first that its client is gone, so it stops instead of writing to a dead socket.
        self._write_deadline = None
        if self.transport is None or self.transport.is_closing():
            return
        for cycle in self._unfinished_cycles():
            cycle.disconnected = True
            cycle.message_event.set()
        super().resume_writing()  # type: ignore[misc]  # wakes the sender waiting for the client to read
        self.transport.abort()

    def _unfinished_cycles(self) -> list[Any]:
        return [self.cycle] if self.cycle is not None and not self.cycle.response_complete else []

    def _arm(self) -> None:
        if self._deadline is None:  # never extend a deadline already running
            self._deadline = self.loop.call_later(self.header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self.transport is None or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm()  # our response is still in flight (pipelining paused reading): not the client's fault
            return
        if self._partial_request():
            self.transport.write(REQUEST_TIMEOUT_408)
        self.transport.close()

    def _partial_request(self) -> bool:
        raise NotImplementedError


def protocol_class(http_impl: str, header_timeout_s: float, write_timeout_s: float = 30.0) -> type[asyncio.Protocol]:
    """The protocol class for uvicorn.Config(http=...): "auto" takes httptools when installed, as uvicorn does."""
    use_httptools = http_impl == "httptools" or (http_impl == "auto" and importlib.util.find_spec("httptools"))
    base = _httptools_class() if use_httptools else DeadlineH11Protocol
    return type(base.__name__, (base,), {"header_timeout_s": header_timeout_s, "write_timeout_s": write_timeout_s})


class DeadlineH11Protocol(_Deadlines, H11Protocol):
    def handle_events(self) -> None:
        super().handle_events()
        theirs, ours = self.conn.their_state, self.conn.our_state
        if (theirs is h11.IDLE and self.conn.trailing_data[0]) or (theirs is h11.SEND_BODY and ours is h11.DONE):
            self._arm()  # a request began, or an unread body is being drained after our response
        elif theirs is not h11.IDLE:  # the current request's headers are in
            self._disarm()

    def _partial_request(self) -> bool:
        return self.conn.their_state is h11.IDLE and bool(self.conn.trailing_data[0])


def _httptools_class() -> type[asyncio.Protocol]:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class DeadlineHttpToolsProtocol(_Deadlines, HttpToolsProtocol):
        _began = False  # bytes of the current request arrived, its headers are not complete yet

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._began:  # a request's headers are still incomplete after this read: now they are late
                self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._began = True

        _replying: Any = None  # with pipelining: the earlier request still replying while self.cycle is queued

        def on_headers_complete(self) -> None:
            self._disarm()
            self._began = False
            previous = self.cycle
            super().on_headers_complete()
            if previous is not None and not previous.response_complete:
                self._replying = previous

        def _unfinished_cycles(self) -> list[Any]:
            return [c for c in (self._replying, self.cycle) if c is not None and not c.response_complete]

        def on_response_complete(self) -> None:
            super().on_response_complete()
            # The app answered before reading the whole body: uvicorn discards the rest, but every byte cancels its
            # keep-alive timer, so bound the drain and the next request's headers.
            if not self.transport.is_closing() and self.cycle is not None and self.cycle.more_body:
                self._arm()

        def _partial_request(self) -> bool:
            return self._began

    return DeadlineHttpToolsProtocol
