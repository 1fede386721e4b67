"""The request-header deadline (service/http_protocol.py) against plain uvicorn, on real sockets."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import uvicorn

from service.http_protocol import protocol_class

BIG = 32 * 2**20
FINISHED: list[float] = []  # when the app's send of the big reply returned


async def _app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/big":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(BIG).encode())]})
        chunk = b"x" * 65_536
        for _ in range(BIG // len(chunk)):  # in chunks, as a file is streamed: each waits while writing is paused
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        FINISHED.append(time.monotonic())
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


class _Server:
    def __init__(self, http) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = uvicorn.Config(_app, port=self.port, log_config=None, http=http, timeout_keep_alive=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(5)

    def read_after(self, data: bytes, wait_s: float) -> bytes | None:
        """What the server sent within wait_s after `data`; None if the connection is still open and silent."""
        with socket.create_connection(("127.0.0.1", self.port)) as conn:
            conn.sendall(data)
            conn.settimeout(wait_s)
            try:
                out = b""
                while chunk := conn.recv(4096):
                    out += chunk
                return out  # closed by the server
            except TimeoutError:
                return None


PARTIAL = b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: appl"


@pytest.mark.parametrize("impl", ["httptools", "h11"])
def test_plain_uvicorn_keeps_half_sent_headers_open_for_ever(impl):
    """The gap the module works around: if this fails, uvicorn closes such connections itself; drop the module."""
    with _Server(impl) as server:
        assert server.read_after(PARTIAL, wait_s=2.0) is None  # past its 1 s keep-alive timeout, still open


@pytest.mark.parametrize("impl", ["httptools", "h11"])
def test_header_deadline_closes_slow_and_silent_connections_but_serves_normal_ones(impl):
    with _Server(protocol_class(impl, header_timeout_s=0.5)) as server:
        started = time.monotonic()
        partial = server.read_after(PARTIAL, wait_s=3.0)
        assert partial is not None and partial.startswith(b"HTTP/1.1 408") and b'"hint"' in partial
        assert time.monotonic() - started < 2.0
        assert server.read_after(b"", wait_s=3.0) == b""  # sent nothing: closed without a word
        normal = server.read_after(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", wait_s=3.0)
        assert normal is not None and normal.startswith(b"HTTP/1.1 200") and normal.endswith(b"ok")


def _stalled_reader(server: _Server, hold_s: float) -> list[float]:
    """Ask for 32 MB and read none of it for hold_s; FINISHED as it was before this client hung up."""
    with socket.socket() as conn:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        conn.connect(("127.0.0.1", server.port))
        conn.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(hold_s)
        return list(FINISHED)


def test_plain_uvicorn_waits_for_ever_on_a_client_that_does_not_read():
    FINISHED.clear()
    with _Server("httptools") as server:
        assert _stalled_reader(server, hold_s=2.0) == []  # the app's send still waited when the client gave up


@pytest.mark.parametrize("impl", ["httptools", "h11"])
def test_write_deadline_aborts_a_client_that_does_not_read(impl):
    FINISHED.clear()
    with _Server(protocol_class(impl, header_timeout_s=5, write_timeout_s=0.5)) as server:
        started = time.monotonic()
        finished = _stalled_reader(server, hold_s=2.5)
        assert finished and finished[0] - started < 2.0  # aborted: the app's send returned, its task could end
        normal = server.read_after(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", wait_s=3.0)
        assert normal is not None and normal.endswith(b"ok")
