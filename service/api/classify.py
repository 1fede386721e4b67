"""POST /v1/classify: the hot path, as a plain ASGI endpoint in front of FastAPI.

    bytes (GuardMiddleware has checked key, type, size) -> JSON (stdlib, as FastAPI parses it; bodies over
      OFF_LOOP_BYTES parsed on a thread) -> the same pydantic request model FastAPI documents
      -> Engine.classify (normalise, cache, tokenise, batch), cancelled if the client disconnects
      -> response dict -> JSON bytes (pydantic_core) -> two ASGI messages

Why not a FastAPI route: py-spy under load (64 connections, cache on so that only HTTP is left) put about half of
the event loop's time per request in FastAPI's and Starlette's layers (routing, dependency solving, exception and
telemetry middleware, response-model validation). The event loop shares two cores with the model, so every
millisecond it spends is a millisecond less of inference. FastAPI still documents the route (service/main.py
registers it for the schema, and its handler uses `classify_texts` and `error_parts` below, so both paths answer
the same: tests/test_service_api.py compares them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pydantic_core
from pydantic import ValidationError

from ernie_cls.errors import ErnieClsError, UserInputError
from service.api.guards import ascii_int, respond
from service.api.schemas import ClassifyRequestBase
from service.errors import (
    ClientGoneError,
    InferenceTimeoutError,
    InvalidJsonError,
    NotReadyError,
    error_body,
    error_parts,
)
from service.request_log import RequestLog, RequestRecord

if TYPE_CHECKING:
    from service.config import Settings
    from service.engine import Engine
    from service.metrics import Metrics
    from service.registry import Registry

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

INTERNAL_ERROR = ("internal_error", "Internal error.", "Retry; if it persists, report the X-Request-ID.")
OFF_LOOP_BYTES = 65_536  # larger bodies are parsed and validated on a thread (json.loads of 1 MB: milliseconds)
MAX_TIMEOUT_MS = 600_000


# ----------------------------------------------------------------------------- error mapping (both paths)
def log_server_error(scope: Scope, status: int, err: BaseException | None) -> None:
    """A reply whose hint says to report the request id or check the logs (500, inference timeout) leaves a log
    line with that id. 503s and deadline 504s are load signals, counted by the metrics, not logged per request."""
    if status != 500 and not isinstance(err, InferenceTimeoutError):
        return
    request_id = scope.get("state", {}).get("request_id", "")
    if isinstance(err, ErnieClsError):
        log.error("%s %s -> %d %s (request id %s)", scope["method"], scope["path"], status, err.message, request_id)
    else:
        log.error("%s %s -> %d (request id %s)", scope["method"], scope["path"], status, request_id, exc_info=err)


def validation_error_parts(errors: list[Any]) -> tuple[int, dict[str, Any]]:
    """Request validation errors (pydantic's, with FastAPI's "body" location prefix) -> 422 naming the first."""
    details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in errors]
    first = details[0] if details else {"loc": [], "msg": "invalid"}
    kind = "invalid_json" if any(e.get("type") == "json_invalid" for e in errors) else "validation_error"
    return 422, error_body(
        kind,
        f"Invalid request at {'.'.join(map(str, first['loc']))}: {first['msg']}.",
        'Send JSON like {"texts": ["送餐很快"]}; see /docs for the schema.',
        details,
    )


# ----------------------------------------------------------------------------- the work (both paths)
def not_ready_reason(engine: Engine) -> str:
    from service.engine import UNHEALTHY_AFTER_FAILED_BATCHES

    if engine.draining:
        return "draining"
    if engine.batcher is not None and engine.batcher.all_stuck:
        return "every model instance is stuck in a call past the inference timeout"
    if engine.faulty:
        return f"{UNHEALTHY_AFTER_FAILED_BATCHES}+ model calls in a row failed or timed out; probing for recovery"
    return engine.not_ready_reason or "loading"


def set_not_ready_reason(registry: Registry) -> str:
    """Why the serving set is not ready: draining, or its first engine that is not (named when there are several)."""
    if registry.draining:
        return "draining"
    engines = list(registry.current.engines())
    for name, variant, engine in engines:
        if not engine.is_ready:
            reason = not_ready_reason(engine)
            return reason if len(engines) == 1 else f"model {name} ({variant}): {reason}"
    return "loading"


def model_info(engine: Engine, served_as: str = "", variant: str = "stable") -> dict[str, str]:
    """Which model answered: its manifest's name and version, how it runs, and where it is served (`id`, the name
    in /v1/models/{id}/classify; `variant`, stable or canary; `manifest_sha256`, what ERNIE_CLS_ARTIFACT_SHA256 or
    the models file pins)."""
    assert engine.artifact is not None and engine.backend is not None
    spec = engine.artifact.spec
    return {
        "id": served_as,
        "variant": variant,
        "name": spec.name,
        "version": spec.version,
        "manifest_sha256": engine.artifact.manifest_sha256,
        "backend": engine.backend.runtime,
        "precision": engine.backend.precision,
    }


MODEL_ROUTE_PREFIX, MODEL_ROUTE_SUFFIX = "/v1/models/", "/classify"


def model_in_path(path: str) -> str | None:
    """/v1/models/{name}/classify -> name; /v1/classify -> "" (the default model); any other path -> None."""
    if path == "/v1/classify":
        return ""
    if path.startswith(MODEL_ROUTE_PREFIX) and path.endswith(MODEL_ROUTE_SUFFIX):
        name = path[len(MODEL_ROUTE_PREFIX) : -len(MODEL_ROUTE_SUFFIX)]
        if name and "/" not in name:
            return name
    return None


def route_of(path: str) -> str:
    """A classify path's route template (the requests counter's label: bounded, whatever names clients send)."""
    return "/v1/classify" if path == "/v1/classify" else "/v1/models/{name}/classify"


def timeout_ms(raw: str | None, default: int) -> int:
    if raw is None:
        return default
    value = ascii_int(raw.strip(), len(str(MAX_TIMEOUT_MS)))
    if value is None or not 1 <= value <= MAX_TIMEOUT_MS:
        raise UserInputError(
            f"X-Request-Timeout-Ms must be an integer from 1 to {MAX_TIMEOUT_MS}.", "E.g. 2000 for 2 s."
        )
    return value


@dataclass(frozen=True)
class Chosen:
    """The version that accepted a request; it answers all of it, whatever reload happens meanwhile."""

    name: str
    variant: str
    engine: Engine


def choose(registry: Registry, name: str | None, caller: str) -> Chosen:
    """Model by name (None: the default), version by the caller's sticky canary bucket. Raises NoSuchModelError."""
    model = registry.current.get(name)
    variant, engine = model.pick(caller)
    return Chosen(model.name, variant, engine)


async def classify_texts(
    chosen: Chosen,
    metrics: Metrics,
    payload: ClassifyRequestBase,
    timeout_header: str | None,
    receive: Receive,
    default_timeout_ms: int,
) -> tuple[dict[str, Any], dict[str, str]]:
    """A validated request -> (response body as ClassifyResponse's dict, timing headers). Raises ErnieClsError."""
    engine = chosen.engine
    if not engine.can_serve or engine.batcher is None:
        raise NotReadyError(not_ready_reason(engine))
    started = time.perf_counter()
    deadline = time.monotonic() + timeout_ms(timeout_header, default_timeout_ms) / 1000
    timings = {"queue_s": 0.0, "inference_s": 0.0}  # stays 0 when every text came from the cache
    top_k = min(payload.top_k, len(engine.labels))
    results = await _cancel_on_disconnect(
        receive, engine.classify(payload.all_texts(), top_k, payload.truncate, deadline, timings)
    )
    metrics.observe_latency(chosen.name, chosen.variant, time.perf_counter() - started)
    info = model_info(engine, chosen.name, chosen.variant)
    body = {
        "predictions": [
            {
                "label": r.label,
                "score": r.score,
                "top_k": [{"label": label, "score": score} for label, score in r.top_k],
                "truncated": r.truncated,
                "low_confidence": r.low_confidence,
            }
            for r in results
        ],
        "model": info,
    }
    headers = {
        "X-Model": chosen.name,
        "X-Model-Variant": chosen.variant,
        "X-Model-Version": quote(info["version"], safe=""),  # percent-encoded: a header carries latin-1 only
        "X-Queue-Time-Ms": f"{timings['queue_s'] * 1000:.2f}",
        "X-Inference-Time-Ms": f"{timings['inference_s'] * 1000:.2f}",
    }
    return body, headers


async def _cancel_on_disconnect(receive: Receive, work: Awaitable[Any]) -> Any:
    """Await `work` in this task; if the client disconnects first, cancel it (its texts are dropped before
    inference) and raise ClientGoneError. One watcher task per request, no asyncio.wait."""
    this = asyncio.current_task()
    assert this is not None
    gone = False

    async def watch() -> None:
        # The body has been read, so the next message is the disconnect (ASGI). Anything else means this receive()
        # cannot tell us: stop watching rather than ask again (asking in a loop would spin the event loop).
        nonlocal gone
        try:
            message = await receive()
        except Exception:  # a guard refused the stream: nothing more to learn from it
            return
        if message["type"] == "http.disconnect":
            gone = True
            this.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if gone:
            this.uncancel()
            raise ClientGoneError() from None
        raise
    finally:
        watcher.cancel()


# ----------------------------------------------------------------------------- the fast path
class ClassifyEndpoint:
    """ASGI app for POST /v1/classify and POST /v1/models/{name}/classify (behind GuardMiddleware: key, size limit,
    content type, request id)."""

    def __init__(
        self,
        registry: Registry,
        settings: Settings,
        metrics: Metrics,
        request_model: type[ClassifyRequestBase],
    ) -> None:
        self.registry, self.settings, self.metrics = registry, settings, metrics
        self.request_model = request_model
        self.request_log = RequestLog(settings.log_requests, settings.log_texts)
        self.caller_header = settings.caller_header.lower().encode("latin-1")
        self._model_fields: dict[tuple[int, str, str], dict[str, str]] = {}  # (engine, name, variant) -> fields

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: dict[str, str] = {}
        record = self.request_log.start(scope)
        chosen: Chosen | None = None
        try:
            chosen = self._choose(scope)
            with chosen.engine.serving():  # counted from here: a reload does not retire it under this request
                status, (body, headers) = 200, await self._handle(chosen, scope, receive, record)
        except RequestValidationFailedError as err:
            status, body = validation_error_parts(err.errors)
        except ErnieClsError as err:
            status, body, headers = error_parts(err)
            log_server_error(scope, status, err)
        except Exception as err:
            status, body = 500, error_body(*INTERNAL_ERROR)
            log_server_error(scope, status, err)
        await respond(send, status, pydantic_core.to_json(body), headers)
        if record is not None:
            self.request_log.finish(record, status, body, headers, self._model(chosen))

    def log_refused(self, scope: Scope, err: ErnieClsError) -> None:
        """A request the guard in front answered (key, content type, size, in-flight cap): its request-log line."""
        record = self.request_log.start(scope)
        if record is not None:
            status, body, _ = error_parts(err)
            chosen = None
            with contextlib.suppress(ErnieClsError):
                chosen = self._choose(scope)
            self.request_log.finish(record, status, body, {}, self._model(chosen))

    def _choose(self, scope: Scope) -> Chosen:
        name = model_in_path(scope["path"].removeprefix(scope.get("root_path", "")))
        caller = ""
        for key, value in scope["headers"]:
            if key == self.caller_header:  # the first one, as Starlette's request.headers.get (the other routes)
                caller = value.decode("latin-1")
                break
        return choose(self.registry, name or None, caller or scope.get("state", {}).get("request_id", ""))

    def _model(self, chosen: Chosen | None) -> dict[str, str] | None:
        """The request log's model fields, built once per version (they do not change while it serves)."""
        if chosen is None or chosen.engine.artifact is None or chosen.engine.backend is None:
            return None
        key = (id(chosen.engine), chosen.name, chosen.variant)
        fields = self._model_fields.get(key)
        if fields is None:
            if len(self._model_fields) > 64:  # versions retired by reloads
                self._model_fields.clear()
            fields = {**model_info(chosen.engine, chosen.name, chosen.variant), "format": chosen.engine.format}
            self._model_fields[key] = fields
        return fields

    async def _handle(
        self, chosen: Chosen, scope: Scope, receive: Receive, record: RequestRecord | None
    ) -> tuple[dict[str, Any], dict[str, str]]:
        timeout_header = None
        for name, value in scope["headers"]:
            if name == b"x-request-timeout-ms":
                timeout_header = value.decode("latin-1")
        chosen.engine.refuse_if_full()  # no room for even one text: 429 before reading or parsing anything
        raw = await _read_body(receive)
        if len(raw) > OFF_LOOP_BYTES:
            payload = await asyncio.get_running_loop().run_in_executor(None, self._parse, raw)
        else:
            payload = self._parse(raw)
        if record is not None:
            record.texts = payload.all_texts()
        return await classify_texts(
            chosen, self.metrics, payload, timeout_header, receive, self.settings.request_timeout_ms
        )

    def _parse(self, raw: bytes) -> ClassifyRequestBase:
        try:
            return self.request_model.model_validate(parse_json(raw))
        except ValidationError as err:  # the request model's verdict, located like FastAPI's
            raise RequestValidationFailedError(
                [{**e, "loc": ("body", *e["loc"])} for e in err.errors(include_url=False)]
            ) from None


def parse_json(raw: bytes) -> Any:
    """The body as JSON the way FastAPI reads it (stdlib json: lone surrogates pass, to be normalised like in
    training; pydantic's own JSON parser rejects them)."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as err:
        error = {"type": "json_invalid", "loc": ("body", err.pos), "msg": "JSON decode error"}
        raise RequestValidationFailedError([error]) from None
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError, or an integer past int()'s digit limit
        raise unparsable_body(err) from None


def unparsable_body(cause: BaseException | None) -> ErnieClsError:
    """A body json.loads gave up on other than by a syntax error (FastAPI answers those 400; we say why, 422)."""
    if isinstance(cause, ErnieClsError):  # a guard's verdict raised while FastAPI read the body (413, 408)
        return cause
    if isinstance(cause, RecursionError):
        return InvalidJsonError(
            "The body's JSON is nested too deeply to parse.", 'Send a flat JSON object like {"texts": ["送餐很快"]}.'
        )
    if isinstance(cause, UnicodeDecodeError) or not isinstance(cause, ValueError):
        return InvalidJsonError("The body is not valid UTF-8 JSON.", "Encode the JSON body as UTF-8.")
    return InvalidJsonError(
        "The body holds a number too long to parse (over 4 300 digits).",
        "Send numbers such as top_k as small integers.",
    )


class RequestValidationFailedError(Exception):
    """Validation errors in FastAPI's shape (locations start with "body"), answered by validation_error_parts."""

    def __init__(self, errors: list[Any]) -> None:
        super().__init__("invalid request")
        self.errors = errors


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGoneError()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
