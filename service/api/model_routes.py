"""GET /v1/models (every model and version), GET /v1/models/{name}, POST /v1/models/{name}/explain (and
/v1/explain for the default model), and the admin API: POST /v1/admin/reload and POST /v1/admin/rollback
(service/registry.py does the work; the guard in front checks the admin key)."""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import FastAPI, Request

from ernie_cls.errors import UserInputError
from service.api.classify import choose, model_info, not_ready_reason, set_not_ready_reason, timeout_ms
from service.api.schemas import (
    ErrorResponse,
    ExplainRequest,
    ExplainResponse,
    ModelInfo,
    ModelsResponse,
    ServedModelInfo,
    VersionInfo,
)
from service.config import Settings
from service.engine import Engine
from service.errors import ExplainLimitError, NotReadyError
from service.registry import ModelSet, Registry, ServedModel

log = logging.getLogger(__name__)

ADMIN_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or wrong admin key."},
    403: {"model": ErrorResponse, "description": "The admin API is off (no ERNIE_CLS_ADMIN_KEYS)."},
    409: {"model": ErrorResponse, "description": "Not done: the models that were serving still are; says why."},
}


def _version(model: ServedModel, variant: str, engine: Engine) -> VersionInfo:
    share = model.canary_percent if variant == "canary" else 100 - (model.canary_percent if model.canary else 0)
    info = VersionInfo(variant=variant, share_percent=share, ready=engine.is_ready)
    if engine.artifact is not None:
        spec = engine.artifact.spec
        info.name, info.version, info.labels = spec.name, spec.version, list(spec.labels)
        info.manifest_sha256, info.max_seq_len, info.format = (
            engine.artifact.manifest_sha256,
            spec.max_seq_len,
            engine.format,
        )
    return info


def describe(models: ModelSet) -> list[ServedModelInfo]:
    return [
        ServedModelInfo(
            id=name,
            default=name == models.default,
            versions=[_version(model, variant, engine) for variant, engine in model.variants()],
        )
        for name, model in models.models.items()
    ]


def add_model_routes(app: FastAPI, registry: Registry) -> None:
    @app.get("/v1/models", response_model=ModelsResponse, responses={503: {"model": ErrorResponse}}, tags=["model"])
    async def models() -> ModelsResponse:
        current = registry.current
        default = current.get(None)
        engine = default.stable
        if engine.artifact is None or engine.backend is None:
            raise NotReadyError(set_not_ready_reason(registry))
        spec, manifest = engine.artifact.spec, engine.artifact.manifest
        return ModelsResponse(
            generation=current.generation,
            models=describe(current),
            name=spec.name,
            version=spec.version,
            manifest_sha256=engine.artifact.manifest_sha256,
            labels=list(spec.labels),
            max_seq_len=engine.artifact.max_seq_len,
            serving=ModelInfo(**model_info(engine, default.name, "stable")),
            formats={
                k: {kk: vv for kk, vv in v.items() if kk != "quantization"} for k, v in manifest["formats"].items()
            },
            metrics=manifest.get("metrics", {}),
        )

    @app.get(
        "/v1/models/{name}", response_model=ServedModelInfo, responses={404: {"model": ErrorResponse}}, tags=["model"]
    )
    async def one_model(name: str) -> ServedModelInfo:
        current = registry.current
        current.get(name)  # 404 naming the models there are
        return next(m for m in describe(current) if m.id == name)


def add_admin_routes(app: FastAPI, registry: Registry) -> None:
    @app.post("/v1/admin/reload", response_model=list[ServedModelInfo], responses=ADMIN_RESPONSES, tags=["admin"])
    async def reload() -> list[ServedModelInfo]:
        """Read the models file again; load, verify and warm what changed while the current models serve; then
        swap. The replaced set stays warm for POST /v1/admin/rollback. Replies with the models now serving."""
        return describe(await registry.reload())

    @app.post("/v1/admin/rollback", response_model=list[ServedModelInfo], responses=ADMIN_RESPONSES, tags=["admin"])
    async def rollback() -> list[ServedModelInfo]:
        """Serve the set that the last reload replaced (still warm: no loading)."""
        return describe(await registry.rollback())


EXPLAIN_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "No such model."},
    422: {"model": ErrorResponse, "description": "Text empty or longer than ERNIE_CLS_MAX_EXPLAIN_CHARS."},
    429: {"model": ErrorResponse, "description": "Explanations already running (ERNIE_CLS_EXPLAIN_CONCURRENCY)."},
    503: {"model": ErrorResponse, "description": "Not ready."},
}


def add_explain_routes(app: FastAPI, registry: Registry, settings: Settings) -> None:
    """Occlusion attributions for one text. Bounded: at most max_explain_chars characters, and at most
    explain_concurrency explanations at once (each is one model row per piece, up to max_seq_len - 2 rows)."""
    running = 0

    async def explain(name: str | None, body: ExplainRequest, request: Request) -> ExplainResponse:
        nonlocal running
        if len(body.text) > settings.max_explain_chars:
            raise UserInputError(
                f"The text has {len(body.text)} characters; /explain takes at most {settings.max_explain_chars}.",
                "Explain a shorter passage (each character costs a model call), or raise ERNIE_CLS_MAX_EXPLAIN_CHARS.",
            )
        caller = request.headers.get(settings.caller_header) or request.scope.get("state", {}).get("request_id", "")
        chosen = choose(registry, name, caller)
        engine = chosen.engine
        if not engine.can_serve:
            raise NotReadyError(not_ready_reason(engine))
        if running >= settings.explain_concurrency:
            raise ExplainLimitError(
                f"{running} explanation(s) running already (the limit is {settings.explain_concurrency}).",
                "Retry after the Retry-After header's second; /v1/classify is not limited this way.",
            )
        running += 1
        try:
            deadline = time.monotonic() + timeout_ms(request.headers.get("x-request-timeout-ms"), 10_000) / 1000
            result = await engine.explain(body.text, deadline)
        finally:
            running -= 1
        return ExplainResponse(**result, model=ModelInfo(**model_info(engine, chosen.name, chosen.variant)))

    @app.post(
        "/v1/models/{name}/explain", response_model=ExplainResponse, responses=EXPLAIN_RESPONSES, tags=["classify"]
    )
    async def explain_with(name: str, body: ExplainRequest, request: Request) -> ExplainResponse:
        """Which characters the model's decision rests on (occlusion; the playground at / draws them)."""
        return await explain(name, body, request)

    @app.post("/v1/explain", response_model=ExplainResponse, responses=EXPLAIN_RESPONSES, tags=["classify"])
    async def explain_default(body: ExplainRequest, request: Request) -> ExplainResponse:
        """/v1/models/{name}/explain for the default model."""
        return await explain(None, body, request)
