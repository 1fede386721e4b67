"""`python -m service`: serve the configured artifact with uvicorn, JSON logs and a graceful drain.

SIGHUP: reload the models file (service/registry.py), like POST /v1/admin/reload.

SIGTERM/SIGINT: readiness turns 503 at once (load balancers stop sending) and every reply says `Connection: close`
(a kept-alive client opens a new connection, which goes to another replica, instead of sending into a socket that
is about to close); after ERNIE_CLS_DRAIN_GRACE_S uvicorn stops accepting, requests already accepted finish (the
HTTP server and then the batcher share one ERNIE_CLS_DRAIN_TIMEOUT_S), and the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import logging.handlers
import queue
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Generator
from types import FrameType

import uvicorn

from service.config import Settings
from service.errors import ReloadError
from service.http_protocol import protocol_class
from service.main import create_app
from service.registry import Registry

log = logging.getLogger("service")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if isinstance(fields, dict):  # a structured line (the request log): its fields are the line's keys
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class PlainFormatter(logging.Formatter):
    """Human-readable lines; a structured line's fields follow its message as JSON."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        return f"{line} {json.dumps(fields, ensure_ascii=False)}" if isinstance(fields, dict) else line


REQUEST_LOG_QUEUE = 10_000  # lines waiting to be written; past it (a stalled stderr) new lines are dropped, counted


class _UnformattedQueueHandler(logging.handlers.QueueHandler):
    """Hands the record over as it is (formatting and writing happen on the listener's thread), and never blocks
    the event loop: with the queue full (stderr stalled), the line is dropped and counted instead of growing memory."""

    dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            type(self).dropped += 1


class _RequestLogListener(logging.handlers.QueueListener):
    """Writes the queued request lines; `stop` flushes them but waits at most `timeout` (a stalled stderr must not
    hold the process after a drain)."""

    def __init__(self, records: queue.Queue[logging.LogRecord | None], handler: logging.Handler) -> None:
        super().__init__(records, handler)
        self.records = records

    def stop(self, timeout: float = 2.0) -> None:
        if self._thread is None:
            return
        with contextlib.suppress(queue.Full):
            self.records.put(None, timeout=timeout)  # QueueListener's end-of-queue sentinel
        self._thread.join(timeout)
        self._thread = None
        if _UnformattedQueueHandler.dropped:
            logging.getLogger(__name__).warning(
                "the request log dropped %d lines (stderr was not read fast enough)", _UnformattedQueueHandler.dropped
            )


def configure_logging(json_logs: bool) -> logging.handlers.QueueListener:
    """Log to stderr; the request log (one line per request) through a bounded queue, so the event loop only
    enqueues it (formatting and writing it there cost ~6 % of throughput at 64 connections). Returns the queue's
    listener, which `DrainingServer` stops (flushes) when serving ends."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json_logs else PlainFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers = [handler]
        logging.getLogger(name).propagate = False
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)  # per-request lines: use the metrics instead
    records: queue.Queue[logging.LogRecord | None] = queue.Queue(REQUEST_LOG_QUEUE)
    requests = logging.getLogger("ernie_cls.requests")
    requests.handlers, requests.propagate = [_UnformattedQueueHandler(records)], False
    listener = _RequestLogListener(records, handler)
    listener.start()
    return listener


SETTLE_BEFORE_CLOSING_S = 0.3


class DrainingServer(uvicorn.Server):
    """uvicorn.Server that marks the models draining the moment a shutdown signal arrives, and reloads the models
    file on SIGHUP (as POST /v1/admin/reload does; a failed reload is logged and the current models keep serving)."""

    def __init__(self, config: uvicorn.Config, registry: Registry, on_stop: Callable[[], None] = lambda: None) -> None:
        super().__init__(config)
        self.engine, self.on_stop = registry, on_stop  # `engine`: what drains (all the models)
        self._reloads: set[asyncio.Task[None]] = set()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        with contextlib.suppress(NotImplementedError, RuntimeError):  # no signals off the main thread / on Windows
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._reload_on_signal)

    def _reload_on_signal(self) -> None:
        task = asyncio.get_running_loop().create_task(self._reload(), name="reload-on-sighup")
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _reload(self) -> None:
        log.warning("SIGHUP: reloading the models file")
        try:
            await self.engine.reload()
        except ReloadError as err:
            log.error("reload refused, the current models keep serving: %s %s", err.message, err.hint)
        except Exception:
            log.exception("reload failed, the current models keep serving")

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # uvicorn re-sends the shutdown signal to the process when serving ends (the default handler then kills it
        # unless it is PID 1): whatever must happen after the drain (flushing the request log) happens before that.
        with super().capture_signals():
            try:
                yield
            finally:
                self.on_stop()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Stop accepting first, then give requests already on their way over accepted connections a moment to
        # arrive: uvicorn's shutdown closes every connection whose request has not been parsed yet, which loses a
        # request a client sent just before (seen once in 2 200 keep-alive requests across a drain).
        for server in self.servers:
            server.close()
        await asyncio.sleep(SETTLE_BEFORE_CLOSING_S)
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        grace = self.engine.settings.drain_grace_s
        if self.engine.draining or grace <= 0:  # no grace, or a second signal: stop accepting now
            self.engine.start_draining()
            super().handle_exit(sig, frame)
            return
        # Readiness turns 503 now; the listener stays open for `grace` seconds so load balancers notice before
        # connections are refused (closing it earlier resets connections that are in flight towards it).
        self.engine.start_draining()
        timer = threading.Timer(grace, super().handle_exit, (sig, frame))
        timer.daemon = True
        timer.start()


def uvicorn_config(settings: Settings, app: object) -> uvicorn.Config:
    # No limit_concurrency: uvicorn counts idle connections and answers every route (health included) with a
    # plain-text 503 past it. The API's own cap (ERNIE_CLS_MAX_CONCURRENT_REQUESTS) exempts the health routes.
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=settings.host,
        port=settings.port,
        log_config=None,
        timeout_graceful_shutdown=settings.drain_timeout_s,  # type: ignore[arg-type]  # a float works (wait_for)
        http=protocol_class(settings.http_impl, settings.header_timeout_s, settings.write_timeout_s),
    )


def main() -> None:
    settings = Settings()
    listener = configure_logging(settings.log_json)
    app = create_app(settings, freeze_gc=True)
    try:
        DrainingServer(uvicorn_config(settings, app), app.state.registry, on_stop=listener.stop).run()
    finally:
        listener.stop()  # when serving ended otherwise (an error at start-up); a second stop does nothing


if __name__ == "__main__":
    main()
