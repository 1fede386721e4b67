"""The request log's plumbing in `python -m service`: flushed before uvicorn re-sends the shutdown signal, bounded
when stderr stalls, and never holding the process at exit."""

from __future__ import annotations

import logging
import queue
import threading
import time
from types import SimpleNamespace

import uvicorn

from service.__main__ import DrainingServer, _RequestLogListener, _UnformattedQueueHandler


def test_the_log_is_flushed_before_uvicorn_re_sends_the_shutdown_signal():
    """uvicorn re-raises SIGTERM when serving ends; a process that is not PID 1 dies there, so the flush must come
    first: inside capture_signals, not after run()."""
    order: list[str] = []
    server = DrainingServer(uvicorn.Config(app=None), SimpleNamespace(), on_stop=lambda: order.append("flush"))
    with server.capture_signals():
        order.append("serving")
    order.append("signal re-sent here")
    assert order == ["serving", "flush", "signal re-sent here"]


def record(i: int) -> logging.LogRecord:
    return logging.LogRecord("ernie_cls.requests", logging.INFO, __file__, 0, "request", None, None)


def test_a_stalled_stderr_drops_lines_instead_of_growing_memory_or_blocking():
    _UnformattedQueueHandler.dropped = 0
    records: queue.Queue = queue.Queue(2)
    handler = _UnformattedQueueHandler(records)
    started = time.perf_counter()
    for i in range(5):
        handler.emit(record(i))
    assert time.perf_counter() - started < 0.5 and records.qsize() == 2 and _UnformattedQueueHandler.dropped == 3
    _UnformattedQueueHandler.dropped = 0


def test_stopping_gives_up_on_a_stalled_writer():
    stalled = threading.Event()

    class Stuck(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            stalled.wait(10)  # stderr nobody reads

    records: queue.Queue = queue.Queue(4)
    listener = _RequestLogListener(records, Stuck())
    listener.start()
    for i in range(4):
        records.put(record(i))
    started = time.perf_counter()
    listener.stop(timeout=0.3)
    assert time.perf_counter() - started < 1.5  # bounded: the process can exit after its drain
    stalled.set()
