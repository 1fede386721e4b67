"""Which models the service serves: the TOML file named by ERNIE_CLS_MODELS, or ERNIE_CLS_ARTIFACT alone.

    default = "sentiment"                        # POST /v1/classify goes here (default: the first model)
    [models.sentiment]                           # served at POST /v1/models/sentiment/classify
    artifact = "exported/waimai-sentiment"       # the stable version
    artifact_sha256 = "..."                      # optional pin of its manifest.json
    canary = "exported/waimai-sentiment-v2"      # optional second version
    canary_sha256 = "..."                        # optional pin
    canary_percent = 1                           # share of callers sent to the canary (0-100, sticky per caller)
    format = "onnx-int8"                         # optional; workers / threads override the service's per model
    [models.intent]
    artifact = "exported/tickets-intent"

Relative paths are relative to the models file. The file is read at start-up and again on every reload (SIGHUP,
POST /v1/admin/reload), so editing it and reloading is how a canary starts, grows, is promoted or dropped.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ernie_cls.artifact import ArtifactError, read_manifest
from ernie_cls.errors import ConfigError
from service.config import Settings

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # a URL path segment as it is: no escaping, no slashes
SHA256 = r"^\s*[0-9a-fA-F]{64}\s*$"
Variant = Literal["stable", "canary"]


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    artifact: str
    artifact_sha256: str | None = Field(None, pattern=SHA256)
    canary: str | None = None
    canary_sha256: str | None = Field(None, pattern=SHA256)
    canary_percent: float = Field(0.0, ge=0, le=100)
    format: str | None = None
    workers: int | None = Field(None, ge=1)
    threads: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _canary_needs_artifact(self) -> ModelEntry:
        if self.canary is None and (self.canary_percent > 0 or self.canary_sha256 is not None):
            raise ValueError("canary_percent / canary_sha256 are set but `canary` (its artifact) is not")
        return self

    def variants(self) -> dict[Variant, tuple[str, str | None]]:
        """variant -> (artifact directory, manifest pin)."""
        out: dict[Variant, tuple[str, str | None]] = {"stable": (self.artifact, self.artifact_sha256)}
        if self.canary is not None:
            out["canary"] = (self.canary, self.canary_sha256)
        return out


class ModelsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default: str | None = None
    models: dict[str, ModelEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _names_and_default(self) -> ModelsFile:
        for name in self.models:
            if not re.match(NAME_PATTERN, name):
                raise ValueError(f"model name {name!r}: use letters, digits, '_', '.', '-' (at most 64)")
        if self.default is None:
            self.default = next(iter(self.models))
        elif self.default not in self.models:
            raise ValueError(f"default = {self.default!r} is not one of the models ({', '.join(self.models)})")
        return self

    @property
    def default_name(self) -> str:
        assert self.default is not None  # set by the validator
        return self.default


def read_models_file(path: str) -> ModelsFile:
    """Parse and check the models file; paths in it made absolute. Raises ConfigError saying what to fix."""
    file = Path(path)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"Cannot read the models file {path}: {err}.", "Check ERNIE_CLS_MODELS.") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"The models file {path} is not valid TOML: {err}.", "Fix its syntax.") from None
    try:
        models = ModelsFile.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(map(str, first["loc"])) or "(top level)"
        raise ConfigError(
            f"The models file {path} is invalid at {where}: {first['msg']}.",
            "See the models file format in service/models_file.py or the README.",
        ) from None
    for entry in models.models.values():
        entry.artifact = str((file.parent / entry.artifact).resolve())
        if entry.canary is not None:
            entry.canary = str((file.parent / entry.canary).resolve())
    return models


def models_from_settings(settings: Settings) -> ModelsFile:
    """ERNIE_CLS_MODELS if set; else one model, ERNIE_CLS_ARTIFACT, named by ERNIE_CLS_MODEL_NAME or its manifest."""
    if settings.models:
        return read_models_file(settings.models)
    name = settings.model_name or _manifest_name(settings.artifact)
    entry = ModelEntry(artifact=settings.artifact, artifact_sha256=settings.artifact_sha256, format=settings.format)
    return ModelsFile(default=name, models={name: entry})


def _manifest_name(artifact: str) -> str:
    """The artifact's own name if it is a usable path segment, else "default" (the load reports a broken one)."""
    try:
        name = read_manifest(artifact).spec.name
    except ArtifactError:
        return "default"
    return name if re.match(NAME_PATTERN, name) else "default"
