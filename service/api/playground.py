"""The playground at / (service/playground/: one HTML page, a script and a stylesheet; no CDN, no build step): pick
a model, classify texts or a CSV column, see the top-3 labels as bars, the low-confidence warning, and per-character
attributions from /v1/models/{name}/explain. It calls the public API like any client (with the API key typed into
the page when the service has keys)."""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

PLAYGROUND = files("service") / "playground"


def add_playground(app: FastAPI) -> None:
    app.mount("/playground", StaticFiles(directory=str(PLAYGROUND)), name="playground")
    page = (PLAYGROUND / "index.html").read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse(page)
