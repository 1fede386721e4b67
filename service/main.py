"""Assembly: settings -> engine (model) -> FastAPI app with guards, auth, routes, metrics and lifespan.

Routes:  POST /v1/classify   GET /v1/models   GET /healthz (live)   GET /readyz (ready)   GET /metrics
         GET /docs (Swagger UI served from the package, no CDN)   GET /openapi.json

Error mapping (one place): ErnieClsError subclasses -> their http_status with {"error": {type, message, hint}};
request validation -> 422; anything else -> a generic 500, traceback to the log only.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
from collections.abc import AsyncIterator, Coroutine, MutableMapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from ernie_cls import __version__
from ernie_cls.errors import ErnieClsError
from service.api.guards import GuardMiddleware
from service.api.schemas import (
    ClassifyRequestBase,
    ClassifyResponse,
    ErrorResponse,
    LabelScore,
    ModelInfo,
    ModelsResponse,
    Prediction,
    classify_request_model,
)
from service.config import Settings
from service.engine import UNHEALTHY_AFTER_FAILED_BATCHES, Engine
from service.errors import (
    ClientGoneError,
    NotReadyError,
    QueueFullError,
    UnauthorizedError,
)
from service.metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")

ERROR_RESPONSES: dict[int | str, dict] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        401: "Missing or wrong API key.",
        413: "Body larger than the limit.",
        415: "Body is not application/json.",
        422: "Invalid request: bad JSON, too many texts, a text too long or empty after normalisation.",
        429: "Queue full: retry after the Retry-After header's seconds.",
        503: "Not ready (loading, draining, or the model failed verification).",
        504: "Deadline passed before the request could run; no work was done.",
    }.items()
}


def _error(
    status: int, kind: str, message: str, hint: str = "", details: object = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"type": kind, "message": message, "hint": hint, "details": details}}
    return JSONResponse(body, status_code=status, headers=headers)


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    settings = settings or Settings()
    engine = engine or Engine(settings)
    metrics = Metrics(engine)
    engine.on_batch = metrics.on_batch

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.draining = False
        await asyncio.to_thread(engine.load)
        engine.start()
        yield
        engine.draining = True
        await engine.wait_idle(settings.drain_timeout_s)
        await engine.stop()

    app = FastAPIOffline(
        title="ernie-cls",
        version=__version__,
        description="Chinese text classification with ERNIE (INT8 ONNX Runtime by default). "
        "Send one text or a list; each text gets its label, score and top-k labels.",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.engine = engine
    app.state.metrics = metrics

    def count_response(scope: MutableMapping[str, Any], status: int) -> None:
        route = scope.get("route")
        metrics.requests.labels(getattr(route, "path", "unmatched"), str(status)).inc()

    keys = [k.get_secret_value().encode() for k in settings.api_keys]
    app.add_middleware(GuardMiddleware, max_body_bytes=settings.max_body_bytes, on_response=count_response)
    if settings.docs_require_auth and keys:
        app.add_middleware(DocsAuthMiddleware, keys=keys)

    async def require_key(request: Request) -> None:
        if not keys:
            return
        if not key_matches(request.headers.get("authorization", ""), keys):
            raise UnauthorizedError()

    # ---------------------------------------------------------------- error mapping
    @app.exception_handler(ErnieClsError)
    async def _ernie_error(request: Request, err: ErnieClsError) -> JSONResponse:
        headers = None
        if isinstance(err, QueueFullError):
            headers = {"Retry-After": str(int(err.retry_after_s))}
        if isinstance(err, UnauthorizedError):
            headers = {"WWW-Authenticate": "Bearer"}
        kind = re.sub(r"(?<!^)(?=[A-Z])", "_", type(err).__name__.removesuffix("Error")).lower()
        return _error(err.http_status, kind, err.message, err.hint, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, err: RequestValidationError) -> JSONResponse:
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in err.errors()]
        first = details[0] if details else {"loc": [], "msg": "invalid"}
        kind = "invalid_json" if any(e.get("type") == "json_invalid" for e in err.errors()) else "validation_error"
        return _error(
            422,
            kind,
            f"Invalid request at {'.'.join(map(str, first['loc']))}: {first['msg']}.",
            'Send JSON like {"texts": ["送餐很快"]}; see /docs for the schema.',
            details,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        if err.status_code == 400 and "parsing the body" in str(err.detail):  # FastAPI's answer to invalid UTF-8
            return _error(422, "invalid_json", "The body is not valid UTF-8 JSON.", "Encode the JSON body as UTF-8.")
        return _error(err.status_code, "http_error", str(err.detail), "See /docs for the routes.")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(500, "internal_error", "Internal error.", "Retry; if it persists, report the X-Request-ID.")

    # ---------------------------------------------------------------- routes
    request_model = classify_request_model(settings.max_texts_per_request, _label_count(settings))

    async def classify(body: ClassifyRequestBase, request: Request, response: Response) -> ClassifyResponse:
        if not engine.can_serve or engine.batcher is None:
            raise NotReadyError(_reason(engine))
        started = time.perf_counter()
        payload: ClassifyRequestBase = body
        texts = payload.all_texts()
        timeout_ms = _timeout_ms(request, settings.request_timeout_ms)
        deadline = time.monotonic() + timeout_ms / 1000
        timings = {"queue_s": 0.0, "inference_s": 0.0}  # stays 0 when every text came from the cache
        results = await _run_until_disconnect(
            request,
            engine.classify(texts, min(payload.top_k, len(engine.labels)), payload.truncate, deadline, timings),
        )
        response.headers["X-Queue-Time-Ms"] = f"{timings['queue_s'] * 1000:.2f}"
        response.headers["X-Inference-Time-Ms"] = f"{timings['inference_s'] * 1000:.2f}"
        metrics.latency.observe(time.perf_counter() - started)
        return ClassifyResponse(
            predictions=[
                Prediction(
                    label=r.label,
                    score=r.score,
                    top_k=[LabelScore(label=lb, score=s) for lb, s in r.top_k],
                    truncated=r.truncated,
                    low_confidence=r.low_confidence,
                )
                for r in results
            ],
            model=_model_info(engine),
        )

    # The request model carries this deployment's limits; annotations are strings here (PEP 563), so set the real
    # class before FastAPI reads the signature.
    classify.__annotations__["body"] = request_model
    app.add_api_route(
        "/v1/classify",
        classify,
        methods=["POST"],
        response_model=ClassifyResponse,
        responses=ERROR_RESPONSES,
        dependencies=[Depends(require_key)],
        tags=["classify"],
    )

    # Route matching is a linear scan: the hot route goes first.
    app.router.routes.sort(key=lambda route: getattr(route, "path", "") != "/v1/classify")

    @app.get("/v1/models", response_model=ModelsResponse, dependencies=[Depends(require_key)], tags=["model"])
    async def models() -> ModelsResponse:
        if engine.artifact is None:
            raise NotReadyError(_reason(engine))
        m = engine.artifact.manifest
        return ModelsResponse(
            name=m.get("name", ""),
            version=str(m.get("version", "")),
            labels=engine.labels,
            max_seq_len=engine.artifact.max_seq_len,
            serving=_model_info(engine),
            formats={k: {kk: vv for kk, vv in v.items() if kk != "quantization"} for k, v in m["formats"].items()},
            metrics=m.get("metrics", {}),
        )

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict:
        return {"status": "alive"}

    @app.get("/readyz", tags=["operations"], responses={503: {"model": ErrorResponse}})
    async def readyz() -> Response:
        if engine.is_ready:
            return JSONResponse({"status": "ready", "format": engine.format})
        return _error(503, "not_ready", f"Not ready: {_reason(engine)}.", "Wait for start-up, or check the logs.")

    @app.get("/metrics", tags=["operations"], include_in_schema=False)
    async def metrics_route() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


# ------------------------------------------------------------------------- helpers
DOCS_PATHS = ("/docs", "/openapi.json", "/static-offline-docs")


def key_matches(header: str, keys: list[bytes]) -> bool:
    """Bearer token against every configured key, each compared in constant time."""
    token = header[7:].encode() if header.lower().startswith("bearer ") else b""
    return any(hmac.compare_digest(token, k) for k in keys)


class DocsAuthMiddleware:
    """With ERNIE_CLS_DOCS_REQUIRE_AUTH, /docs and /openapi.json need the API key too (browsers: use a proxy)."""

    def __init__(self, app: Any, keys: list[bytes]) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith(DOCS_PATHS):
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            if not key_matches(headers.get("authorization", ""), self.keys):
                response = _error(
                    401,
                    "unauthorized",
                    "Missing or wrong API key.",
                    "Send `Authorization: Bearer <key>`; the docs are protected (DOCS_REQUIRE_AUTH).",
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _reason(engine: Engine) -> str:
    if engine.draining:
        return "draining"
    if engine.faulty:
        return f"{UNHEALTHY_AFTER_FAILED_BATCHES}+ model calls in a row failed or timed out; probing for recovery"
    return engine.not_ready_reason or "loading"


def _label_count(settings: Settings) -> int:
    """Labels in the artifact's manifest (for the schema's top_k bound); the full verification runs at start-up."""
    from ernie_cls.artifact import ArtifactError, read_manifest

    try:
        return max(2, len(read_manifest(settings.artifact).manifest.get("labels", {})))
    except ArtifactError:
        return 2


def _timeout_ms(request: Request, default: int) -> int:
    raw = request.headers.get("x-request-timeout-ms")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= 600_000:
        from ernie_cls.errors import UserInputError

        raise UserInputError("X-Request-Timeout-Ms must be an integer from 1 to 600000.", "E.g. 2000 for 2 s.")
    return int(raw)


def _model_info(engine: Engine) -> ModelInfo:
    assert engine.artifact is not None and engine.backend is not None
    m = engine.artifact.manifest
    return ModelInfo(
        name=m.get("name", ""),
        version=str(m.get("version", "")),
        backend=engine.backend.runtime,
        precision=engine.backend.precision,
    )


async def _run_until_disconnect(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Run `work`; if the client disconnects first, cancel it (its texts are dropped before inference)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        raise ClientGoneError("Client disconnected.", "")
    finally:
        watcher.cancel()


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
