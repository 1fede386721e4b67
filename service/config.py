"""Service settings: every field is an environment variable with the ERNIE_CLS_ prefix (e.g. ERNIE_CLS_ARTIFACT).

Validated at start-up, so a bad setting stops the process with a message instead of failing on first request.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ernie_cls.machine import usable_cores


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ERNIE_CLS_", extra="ignore")

    artifact: str = Field("exported/waimai-sentiment", description="Artifact directory written by `ernie-cls export`.")
    models: str | None = Field(
        None,
        description="A TOML models file (several named models, canaries; service/models_file.py). When set, "
        "ARTIFACT, ARTIFACT_SHA256, FORMAT and MODEL_NAME are not used.",
    )
    model_name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="The one model's name in /v1/models/{name}/classify (default: its manifest's name); letters, "
        "digits, '_', '.', '-'.",
    )
    caller_header: str = Field(
        "x-user-id",
        description="The request header naming the caller, for the sticky canary split (absent: the request id).",
    )
    artifact_sha256: str | None = Field(
        None,
        pattern=r"^\s*[0-9a-fA-F]{64}\s*$",
        description="Pin: the sha256 of the artifact's manifest.json (printed by `ernie-cls export` and `verify`, "
        "shown by GET /v1/models). Any other manifest is refused, so an edited label map cannot be served.",
    )
    format: str | None = Field(None, description="Artifact format to serve (default: the manifest's default, INT8).")
    workers: int = Field(
        default_factory=usable_cores,
        ge=1,
        description="Model instances running batches at once (one thread pool each).",
    )
    threads: int = Field(1, ge=1, description="Threads per model instance (workers x threads <= cores is best).")
    host: str = Field("127.0.0.1", description="Bind address for `python -m service`.")
    port: int = Field(8000, ge=1, le=65535, description="Bind port for `python -m service`.")

    max_batch_size: int = Field(32, ge=1, description="Most texts in one model call.")
    max_batch_tokens: int = Field(4096, ge=16, description="Most padded tokens (batch x longest) in one model call.")
    max_padding_ratio: float = Field(
        1.05,
        ge=1.0,
        description="Most padded/real tokens in a batch (length-aware batching): CPU time follows padded tokens, "
        "and at concurrency 64 a 1.05 bound served 6 % more than 1.2 (smaller batches, less padding).",
    )
    batch_policy: Literal["length", "fifo"] = Field(
        "length", description="'length': group similar lengths (default); 'fifo': arrival order (for comparison)."
    )
    max_wait_ms: float = Field(2.0, ge=0, description="How long a batch waits for more texts before it runs.")
    queue_capacity: int = Field(2048, ge=1, description="Most texts waiting; beyond this requests get 429.")
    max_queue_ms: float = Field(
        500.0,
        ge=0,
        description="Most model time queued ahead of a new request (texts waiting x recent model time per text); "
        "beyond it requests get 429 at once, so that under a flood an admitted request still answers within about "
        "this long (0: count texts only).",
    )
    inference_timeout_s: float = Field(
        30.0, gt=0, description="A model call running longer fails its batch with 504 (the instance is then busy)."
    )
    request_timeout_ms: int = Field(10_000, ge=1, description="Default deadline per request (X-Request-Timeout-Ms).")

    max_texts_per_request: int = Field(64, ge=1, description="Most texts in one request.")
    max_chars_per_text: int = Field(2000, ge=1, description="Longest text accepted (or truncated with truncate=true).")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body; larger gets 413.")
    body_timeout_s: float = Field(10.0, gt=0, description="A request body not fully received this long gets 408.")
    header_timeout_s: float = Field(
        10.0, gt=0, description="A connection that has not sent a request's headers this long is closed (slowloris)."
    )
    write_timeout_s: float = Field(
        30.0, gt=0, description="A connection whose client has not read what we sent for this long is aborted."
    )
    max_concurrent_requests: int = Field(
        512,
        ge=1,
        description="Most API requests in progress (reading their body, queued or running); more get 503 at once. "
        "/healthz, /readyz and /metrics are not counted, so they answer under any flood.",
    )
    max_explain_chars: int = Field(
        256, ge=1, description="Longest text /explain accepts (it costs one model row per character or word piece)."
    )
    explain_concurrency: int = Field(
        1, ge=1, description="Most /explain requests running at once; more get 429 (each is up to ~128 model rows)."
    )
    low_confidence_threshold: float = Field(0.6, ge=0, le=1, description="Scores below are flagged low_confidence.")
    cache_size: int = Field(10_000, ge=0, description="Result cache entries (0 disables the cache).")

    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="Comma-separated Bearer keys; empty means no auth."
    )
    admin_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated Bearer keys for /v1/admin/* (reload, rollback); empty: the admin API is off.",
    )
    docs_require_auth: bool = Field(False, description="Protect /docs and /openapi.json with the API keys too.")
    drain_grace_s: float = Field(
        0.0, ge=0, description="On SIGTERM, keep accepting this long with /readyz at 503, so balancers stop first."
    )
    drain_timeout_s: float = Field(20.0, ge=0, description="On SIGTERM, how long in-flight work may finish.")
    http_impl: Literal["auto", "httptools", "h11"] = Field(
        "auto", description="uvicorn's HTTP parser: 'auto' takes httptools (C, installed with the serve extra)."
    )
    log_json: bool = Field(True, description="JSON log lines (for containers).")
    log_requests: bool = Field(
        True, description="One log line per classify request (ids, lengths, timings, labels, scores; no text)."
    )
    log_texts: bool = Field(False, description="Also log each request's texts (customer data: off by default).")

    @field_validator("api_keys", "admin_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value
