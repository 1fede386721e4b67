"""Assembly: settings -> engine (model) -> FastAPI app with guards, auth, routes, metrics and lifespan.

Routes:  POST /v1/classify (served by service/api/classify.py's ASGI endpoint, ahead of FastAPI's stack; FastAPI
         documents it)   GET /v1/models   GET|HEAD /healthz (live)   GET|HEAD /readyz (ready)   GET /metrics
         GET /docs (Swagger UI served from the package, no CDN)   GET /openapi.json

Both stacks sit behind service/api/guards.py (key, size, body time, in-flight cap), which shares one in-flight count.
Error mapping (service/errors.py, the one table): ErnieClsError subclasses -> their http_status and headers with
{"error": {type, message, hint}}; request validation -> 422; anything else -> a generic 500, traceback and request
id to the log only.

Start-up: the model loads on a thread after the socket is open, so /healthz answers (alive) and /readyz says
"loading" meanwhile; a load failure turns /healthz 503 so that an orchestrator restarts the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable, MutableMapping
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import State
from starlette.exceptions import HTTPException as StarletteHTTPException

from ernie_cls import __version__
from ernie_cls.errors import ErnieClsError
from service.api.classify import (
    INTERNAL_ERROR,
    ClassifyEndpoint,
    choose,
    classify_texts,
    log_server_error,
    model_in_path,
    route_of,
    set_not_ready_reason,
    unparsable_body,
    validation_error_parts,
)
from service.api.guards import GuardMiddleware, InFlight, check_key
from service.api.model_routes import add_admin_routes, add_explain_routes, add_model_routes
from service.api.playground import add_playground
from service.api.schemas import ClassifyRequestBase, ClassifyResponse, ErrorResponse, classify_request_model
from service.config import Settings
from service.engine import Engine
from service.errors import RETRY_AFTER_NOT_READY_S, UnauthorizedError, error_body, error_parts
from service.metrics import Metrics
from service.registry import Registry

log = logging.getLogger(__name__)

ERROR_RESPONSES: dict[int | str, dict] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "Content-Length is not a number.",
        401: "Missing or wrong API key, or several Authorization headers.",
        408: "The body did not arrive within the body timeout.",
        413: "Body larger than the limit.",
        415: "Body is not application/json.",
        422: "Invalid request: bad JSON, too many texts, a text too long or empty after normalisation.",
        429: "Queue full: retry after the Retry-After header's seconds.",
        503: "Not ready (loading, draining, model failed verification or stuck), or too many requests in progress: "
        "retry after the Retry-After header's seconds.",
        504: "Deadline passed before the request could run (no work was done), or inference timed out.",
    }.items()
}


def _error(
    status: int, kind: str, message: str, hint: str = "", details: object = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(kind, message, hint, details), status_code=status, headers=headers)


class ServiceState(State):
    """app.state, whose `engine` is looked up at each access (the default model's stable version now), so that
    nothing keeps a version alive after a reload retired it."""

    @property
    def engine(self) -> Engine:
        return self.registry.default_engine


class ServiceApp(FastAPI):
    """FastAPI with the hot route in front: POST /v1/classify goes straight to its ASGI endpoint (behind the same
    guards), everything else through FastAPI's stack. /docs is Swagger UI from the assets fastapi-offline bundles
    (FastAPI's default loads them from a CDN)."""

    classify_endpoint: Any = None  # GuardMiddleware(ClassifyEndpoint), set by create_app

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(docs_url=None, redoc_url=None, **kwargs)
        self.mount(DOCS_STATIC, StaticFiles(directory=str(files("fastapi_offline") / "static")), name="docs-static")

        @self.get("/docs", include_in_schema=False)
        async def swagger_ui(request: Request) -> HTMLResponse:
            root = request.scope.get("root_path", "")
            return get_swagger_ui_html(
                openapi_url=f"{root}{self.openapi_url}",
                title=f"{self.title} - Swagger UI",
                swagger_js_url=f"{root}{DOCS_STATIC}/swagger-ui-bundle.js",
                swagger_css_url=f"{root}{DOCS_STATIC}/swagger-ui.css",
                swagger_favicon_url=f"{root}{DOCS_STATIC}/favicon.png",
            )

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if (
            self.classify_endpoint is not None
            and scope["type"] == "http"
            and scope["method"] == "POST"
            and model_in_path(scope["path"].removeprefix(scope.get("root_path", ""))) is not None
        ):
            await self.classify_endpoint(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None, freeze_gc: bool = False) -> FastAPI:
    """The app. `freeze_gc` (for `python -m service`): once the models are loaded, move everything alive into the
    GC's permanent generation (profiled: 7 % of the event loop's time at c64 went to re-scanning it)."""
    settings = settings or Settings()
    metrics = Metrics()
    registry = Registry(settings, on_batch=metrics.on_batch)
    metrics.watch(registry)
    app = ServiceApp(
        title="ernie-cls",
        version=__version__,
        description="Chinese text classification with ERNIE (INT8 ONNX Runtime by default). "
        "Send one text or a list; each text gets its label, score and top-k labels.",
        lifespan=_lifespan(registry, settings, freeze_gc),
    )
    app.state = ServiceState()
    app.state.registry = registry  # app.state.engine: the default model's stable version now (ServiceState)
    app.state.metrics = metrics
    count = _request_counter(metrics)
    keys = [k.get_secret_value().encode() for k in settings.api_keys]
    guard_settings: dict[str, Any] = dict(
        max_body_bytes=settings.max_body_bytes,
        keys=keys,
        admin_keys=[k.get_secret_value().encode() for k in settings.admin_keys],
        body_timeout_s=settings.body_timeout_s,
        in_flight=InFlight(settings.max_concurrent_requests),  # one count for both stacks
        draining=lambda: registry.draining,
    )
    if settings.docs_require_auth and keys:
        app.add_middleware(DocsAuthMiddleware, keys=keys)

    def count_response(scope: MutableMapping[str, Any], status: int) -> None:
        count(getattr(scope.get("route"), "path", "unmatched"), status)

    app.add_middleware(GuardMiddleware, on_response=count_response, **guard_settings)  # outermost: ids on every reply
    _add_error_handlers(app)
    _add_classify_routes(app, registry, settings, metrics)
    endpoint = ClassifyEndpoint(registry, settings, metrics, app.state.request_model)
    app.classify_endpoint = GuardMiddleware(
        endpoint,
        on_response=lambda scope, status: count(route_of(scope["path"]), status),
        on_refused=endpoint.log_refused,  # requests the guard answers leave a request-log line too
        **guard_settings,
    )
    add_model_routes(app, registry)
    add_explain_routes(app, registry, settings)
    add_playground(app)
    add_admin_routes(app, registry)
    _add_operations_routes(app, registry, metrics)
    return app


def _lifespan(registry: Registry, settings: Settings, freeze_gc: bool) -> Any:
    """Start-up: the socket is already open while the models load on a thread. Shutdown: drain, then stop, within
    what is left of the drain timeout (uvicorn has already waited part of it for the open connections)."""

    async def load() -> None:
        await registry.start()
        if freeze_gc:
            gc.freeze()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry.draining, registry.draining_since = False, None
        for engine in registry.all_engines():
            engine.draining, engine.draining_since = False, None
        loading = asyncio.get_running_loop().create_task(load(), name="load-models")
        app.state.loading = loading
        yield
        registry.start_draining()
        if not loading.done():  # a thread cannot be stopped: let the load finish, then stop what it started
            await asyncio.wait({loading})
        await registry.stop(registry.drain_time_left(settings.drain_timeout_s))

    return lifespan


def _request_counter(metrics: Metrics) -> Callable[[str, int], None]:
    """count(route, status): the requests counter, its children resolved once per (route, status) (hot path)."""
    counters: dict[tuple[str, int], Any] = {}

    def count(route: str, status: int) -> None:
        counter = counters.get((route, status))
        if counter is None:
            counter = counters[route, status] = metrics.requests.labels(route, str(status))
        counter.inc()

    return count


def _add_error_handlers(app: FastAPI) -> None:
    """FastAPI's side of the one error table (service/errors.py): the same bodies and headers as the fast path."""

    @app.exception_handler(ErnieClsError)
    async def _ernie_error(request: Request, err: ErnieClsError) -> JSONResponse:
        status, body, headers = error_parts(err)
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, err: RequestValidationError) -> JSONResponse:
        status, body = validation_error_parts(list(err.errors()))
        return JSONResponse(body, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        if err.status_code == 400 and "parsing the body" in str(err.detail):  # bad UTF-8, nesting, a guard's 413
            status, body, headers = error_parts(unparsable_body(err.__cause__))
            return JSONResponse(body, status_code=status, headers=headers)
        # err.headers keeps what the status needs (405: Allow)
        return _error(
            err.status_code, "http_error", str(err.detail), "See /docs for the routes.", headers=dict(err.headers or {})
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        log_server_error(request.scope, 500, err)
        return _error(500, *INTERNAL_ERROR)


def _add_classify_routes(app: FastAPI, registry: Registry, settings: Settings, metrics: Metrics) -> None:
    """The documented POST /v1/classify and /v1/models/{name}/classify, with this deployment's limits in their
    request model (app.state). Requests normally reach ClassifyEndpoint first (ServiceApp)."""
    request_model = classify_request_model(settings.max_texts_per_request, _label_count(registry))
    app.state.request_model = request_model

    async def answer(body: ClassifyRequestBase, request: Request, name: str | None) -> Response:
        caller = request.headers.get(settings.caller_header) or request.scope.get("state", {}).get("request_id", "")
        result, headers = await classify_texts(
            choose(registry, name, caller),
            metrics,
            body,
            request.headers.get("x-request-timeout-ms"),
            request.receive,
            settings.request_timeout_ms,
        )
        return JSONResponse(result, headers=headers)

    async def classify(body: ClassifyRequestBase, request: Request) -> Response:
        """Classify with the default model (the models file's `default`)."""
        return await answer(body, request, None)

    async def classify_with(name: str, body: ClassifyRequestBase, request: Request) -> Response:
        """Classify with the model named `name` (GET /v1/models lists them)."""
        return await answer(body, request, name)

    # The request model carries this deployment's limits; annotations are strings here (PEP 563), so set the real
    # class before FastAPI reads the signature.
    for path, handler in (("/v1/classify", classify), ("/v1/models/{name}/classify", classify_with)):
        handler.__annotations__["body"] = request_model
        app.add_api_route(
            path,
            handler,
            methods=["POST"],
            response_model=ClassifyResponse,
            responses=ERROR_RESPONSES,
            tags=["classify"],
        )
    # Route matching is a linear scan: the hot routes go first.
    app.router.routes.sort(key=lambda route: not getattr(route, "path", "").endswith("classify"))


def _add_operations_routes(app: FastAPI, registry: Registry, metrics: Metrics) -> None:
    not_ready_headers = {"Retry-After": str(RETRY_AFTER_NOT_READY_S)}

    @app.api_route("/healthz", methods=["GET", "HEAD"], tags=["operations"], responses={503: {"model": ErrorResponse}})
    async def healthz() -> Response:
        """Liveness: 200 while the process can serve or is loading; 503 once a model of the serving set failed to
        load or every instance of one has been stuck for 4 inference timeouts, so an orchestrator restarts it (a
        transient failure, e.g. a volume not mounted yet, or a hung runtime, then heals). A reload that fails
        does not count: the set that was serving still is."""
        if not registry.alive:
            reason = set_not_ready_reason(registry)
            return _error(503, "not_alive", f"Not alive: {reason}.", "Fix the artifact or settings, then restart.")
        return JSONResponse({"status": "alive"})

    @app.api_route("/readyz", methods=["GET", "HEAD"], tags=["operations"], responses={503: {"model": ErrorResponse}})
    async def readyz() -> Response:
        if registry.is_ready:
            return JSONResponse({"status": "ready", "format": registry.default_engine.format})
        return _error(
            503,
            "not_ready",
            f"Not ready: {set_not_ready_reason(registry)}.",
            "Wait for start-up, or check the logs.",
            headers=not_ready_headers,
        )

    @app.get("/metrics", tags=["operations"], include_in_schema=False)
    async def metrics_route() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


# ------------------------------------------------------------------------- helpers
DOCS_STATIC = "/static-offline-docs"
DOCS_PATHS = ("/docs", "/openapi.json", DOCS_STATIC)


class DocsAuthMiddleware:
    """With ERNIE_CLS_DOCS_REQUIRE_AUTH, /docs and /openapi.json need the API key too (browsers: use a proxy)."""

    def __init__(self, app: Any, keys: list[bytes]) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "").removeprefix(scope.get("root_path", ""))
        if scope["type"] == "http" and path.startswith(DOCS_PATHS):
            try:
                check_key(scope.get("headers", []), self.keys)
            except UnauthorizedError:
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


def _label_count(registry: Registry) -> int:
    """The most labels of any model's manifest (for the schema's top_k bound; each model clamps top_k to its own
    labels); the full verification runs when the models load."""
    from ernie_cls.artifact import ArtifactError, read_manifest

    counts = [2]
    for _, _, engine in registry.current.engines():
        with contextlib.suppress(ArtifactError):
            counts.append(len(read_manifest(engine.settings.artifact).spec.labels))
    return max(counts)
