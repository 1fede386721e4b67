"""One log line per classify request, for tracing a bad release afterwards (logger `ernie_cls.requests`).

    request id, model (its name in the service), variant (stable / canary), artifact name, version, format,
    status, error type, number of texts, their lengths (characters as sent),
    truncated flags, queue / inference / total milliseconds, labels, scores, low-confidence flags

No text is logged unless ERNIE_CLS_LOG_TEXTS=true (texts are customer messages). With JSON logs (the default) the
fields are top-level keys of the line; otherwise they follow the message as JSON. `python -m service` sends these
lines through a queue, formatted and written off the event loop. ERNIE_CLS_LOG_REQUESTS=false turns it off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("ernie_cls.requests")


@dataclass
class RequestRecord:
    request_id: str
    started: float = field(default_factory=time.perf_counter)
    texts: list[str] | None = None  # set once the body parsed


class RequestLog:
    def __init__(self, enabled: bool, log_texts: bool) -> None:
        self.enabled, self.log_texts = enabled, log_texts

    def start(self, scope: MutableMapping[str, Any]) -> RequestRecord | None:
        return RequestRecord(scope.get("state", {}).get("request_id", "")) if self.enabled else None

    def finish(
        self,
        record: RequestRecord | None,
        status: int,
        body: dict[str, Any],
        headers: dict[str, str],
        model: dict[str, str] | None,
    ) -> None:
        if record is None:
            return
        fields: dict[str, Any] = {
            "request_id": record.request_id,
            "model": (model or {}).get("id"),
            "variant": (model or {}).get("variant"),
            "artifact": (model or {}).get("name"),
            "version": (model or {}).get("version"),
            "format": (model or {}).get("format"),
            "status": status,
            "error": (body.get("error") or {}).get("type") if status != 200 else None,
            "texts": len(record.texts) if record.texts is not None else None,
            "lengths": [len(t) for t in record.texts] if record.texts is not None else None,
            "queue_ms": _ms(headers.get("X-Queue-Time-Ms")),
            "inference_ms": _ms(headers.get("X-Inference-Time-Ms")),
            "total_ms": round((time.perf_counter() - record.started) * 1000, 2),
        }
        predictions = body.get("predictions") if status == 200 else None
        if predictions is not None:
            fields["labels"] = [p["label"] for p in predictions]
            fields["scores"] = [round(p["score"], 4) for p in predictions]
            fields["low_confidence"] = [p["low_confidence"] for p in predictions]
            fields["truncated"] = [p["truncated"] for p in predictions]
        if self.log_texts and record.texts is not None:
            fields["text"] = record.texts
        log.info("request", extra={"fields": fields})  # the formatter writes the fields (service/__main__.py)


def _ms(value: str | None) -> float | None:
    return float(value) if value is not None else None
