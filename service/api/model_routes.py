"""GET /v1/models (every model and version), GET /v1/models/{name}, and the admin API: POST /v1/admin/reload and
POST /v1/admin/rollback (service/registry.py does the work; the guard in front checks the admin key)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI

from service.api.classify import model_info, set_not_ready_reason
from service.api.schemas import ErrorResponse, ModelInfo, ModelsResponse, ServedModelInfo, VersionInfo
from service.engine import Engine
from service.errors import NotReadyError
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
