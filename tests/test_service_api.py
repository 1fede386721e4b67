"""The HTTP API over httpx's ASGI transport, on a real exported INT8 artifact: every route and guard."""

from __future__ import annotations

import asyncio
import json
import shutil

import httpx
import pytest

from service.config import Settings
from service.main import create_app


def settings_for(artifact, **overrides) -> Settings:
    values = dict(
        artifact=str(artifact),
        threads=1,
        max_wait_ms=5.0,
        max_texts_per_request=8,
        max_chars_per_text=50,
        max_body_bytes=4096,
        cache_size=100,
    )
    values.update(overrides)
    return Settings(**values)


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples (over every model and version, or those matching `labels`); it must exist."""
    from prometheus_client.parser import text_string_to_metric_families

    samples = [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    ]
    assert samples, f"no {name} {labels} in the metrics"
    return sum(samples)


def call(app, fn):
    """Run `fn(client)` with the app's lifespan (model load, warm-up, batcher) around it, once loading ended."""

    async def main():
        async with app.router.lifespan_context(app):
            await app.state.loading
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await fn(client)

    return asyncio.run(main())


@pytest.fixture(scope="module")
def app(int8_artifact):
    return create_app(settings_for(int8_artifact))


def test_classify_one_text_and_a_list(app):
    async def fn(client):
        one = await client.post("/v1/classify", json={"text": "送餐很快，味道不错"})
        many = await client.post("/v1/classify", json={"texts": ["好吃", "太难吃了", "一般般"], "top_k": 2})
        return one, many

    one, many = call(app, fn)
    assert one.status_code == 200, one.text
    body = one.json()
    assert len(body["predictions"]) == 1
    p = body["predictions"][0]
    assert p["label"] in {"negative", "positive"} and 0.5 <= p["score"] <= 1
    assert p["truncated"] is False and isinstance(p["low_confidence"], bool)
    assert {k: body["model"][k] for k in ("id", "variant", "name", "version", "backend", "precision")} == {
        "id": "tiny-int8",
        "variant": "stable",
        "name": "tiny-int8",
        "version": "1",
        "backend": "onnxruntime",
        "precision": "int8",
    }
    assert len(body["model"]["manifest_sha256"]) == 64
    assert [len(p["top_k"]) for p in many.json()["predictions"]] == [2, 2, 2]
    assert one.headers["x-request-id"] and float(one.headers["x-process-time-ms"]) > 0
    assert float(one.headers["x-inference-time-ms"]) > 0 and float(one.headers["x-queue-time-ms"]) >= 0


def test_answers_match_the_exported_model(app, int8_artifact, trained_run):
    import numpy as np

    from ernie_cls.tokenization import ErnieTokenizerFast
    from release.export import onnx_backend

    texts = ["送餐很快，味道不错", "太难吃了，差评", "ＡＢＣ全角😀"]
    tok = ErnieTokenizerFast.load(int8_artifact / "tokenizer")
    logits = onnx_backend(int8_artifact / "onnx/model.int8.onnx").infer(*tok(texts))
    manifest = json.loads((int8_artifact / "manifest.json").read_text())
    temperature = manifest["formats"]["onnx-int8"]["temperature"]  # fitted on dev at export
    assert temperature > 0 and manifest["metrics"]["onnx-int8"]["test_ece_calibrated"] >= 0
    z = logits / temperature
    probs = np.exp(z) / np.exp(z).sum(1, keepdims=True)

    async def fn(client):
        return await client.post("/v1/classify", json={"texts": texts})

    got = [p["score"] for p in call(app, fn).json()["predictions"]]
    assert got == pytest.approx(probs.max(1).tolist(), abs=1e-5)


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"texts": ["好", "  \u200b\t "]}, 422, "texts[1] is empty after normalisation"),
        ({"texts": ["x" * 51]}, 422, "texts[0] has 51 characters"),
        ({"texts": ["好"] * 9}, 422, "texts"),
        ({"texts": []}, 422, "texts"),
        ({"text": "好", "texts": ["好"]}, 422, "exactly one"),
        ({}, 422, "exactly one"),
        ({"text": "好", "top_k": 0}, 422, "top_k"),
        ({"text": "好", "extra": 1}, 422, "extra"),
        ({"text": 5}, 422, "text"),
    ],
)
def test_invalid_requests_get_422_with_a_message_and_hint(app, body, status, needle):
    async def fn(client):
        return await client.post("/v1/classify", json=body)

    response = call(app, fn)
    assert response.status_code == status
    error = response.json()["error"]
    assert needle in error["message"] + json.dumps(error["details"]) and error["hint"]


def test_truncate_true_cuts_and_flags_instead_of_rejecting(app):
    async def fn(client):
        return await client.post("/v1/classify", json={"texts": ["好吃" * 40, "好吃"], "truncate": True})

    flags = [p["truncated"] for p in call(app, fn).json()["predictions"]]
    assert flags == [True, False]


def test_wrong_content_type_malformed_json_and_oversized_bodies(app):
    async def fn(client):
        text = await client.post("/v1/classify", content='{"text": "好"}', headers={"content-type": "text/plain"})
        broken = await client.post("/v1/classify", content=b'{"text": "', headers={"content-type": "application/json"})
        bad_utf8 = await client.post(
            "/v1/classify", content=b'{"text": "\xff\xfe"}', headers={"content-type": "application/json"}
        )
        big = await client.post("/v1/classify", json={"texts": ["好" * 40] * 200})

        async def chunks():
            for _ in range(100):
                yield b"x" * 100

        chunked = await client.post("/v1/classify", content=chunks(), headers={"content-type": "application/json"})
        return text, broken, bad_utf8, big, chunked

    text, broken, bad_utf8, big, chunked = call(app, fn)
    assert text.status_code == 415 and "Content-Type" in text.json()["error"]["hint"]
    assert broken.status_code == 422 and broken.json()["error"]["type"] == "invalid_json"
    assert bad_utf8.status_code == 422
    assert big.status_code == 413 and chunked.status_code == 413
    assert "Send fewer" in big.json()["error"]["hint"]


def test_health_readiness_models_and_metrics(app):
    async def fn(client):
        before = (await client.get("/metrics")).text
        await client.post("/v1/classify", json={"text": "我要退款"})
        await client.post("/v1/classify", json={"text": "我要退款"})  # cache hit
        return [before] + [await client.get(p) for p in ("/healthz", "/readyz", "/v1/models", "/metrics")]

    before, health, ready, models, metrics = call(app, fn)
    assert health.json() == {"status": "alive"}
    assert ready.status_code == 200 and ready.json()["format"] == "onnx-int8"
    m = models.json()
    assert m["labels"] == ["negative", "positive"] and m["serving"]["precision"] == "int8"
    assert {"onnx-int8", "triton"} <= set(m["formats"]) and "onnx-int8" in m["metrics"]
    text = metrics.text
    assert metric(text, "ernie_cls_cache_hits_total") == metric(before, "ernie_cls_cache_hits_total") + 1
    assert metric(text, "ernie_cls_cache_misses_total") == metric(before, "ernie_cls_cache_misses_total") + 1
    assert 'ernie_cls_requests_total{route="/v1/classify",status="200"}' in text


def test_concurrent_requests_are_batched_per_the_services_own_metrics(int8_artifact):
    app = create_app(settings_for(int8_artifact, max_wait_ms=50.0, cache_size=0))

    async def fn(client):
        replies = await asyncio.gather(
            *(client.post("/v1/classify", json={"text": f"第{i}个评论，送餐很快"}) for i in range(16))
        )
        return replies, (await client.get("/metrics")).text

    replies, metrics = call(app, fn)
    assert all(r.status_code == 200 for r in replies)
    assert metric(metrics, "ernie_cls_batches_total") < 16  # fewer model calls than requests


def test_tampered_artifact_keeps_the_service_not_ready(int8_artifact, tmp_path, caplog):
    copy = tmp_path / "a"
    shutil.copytree(int8_artifact, copy)
    with open(copy / "tokenizer/vocab.txt", "a", encoding="utf-8") as fh:
        fh.write("evil\n")
    app = create_app(settings_for(copy))

    async def fn(client):
        return (
            await client.get("/readyz"),
            await client.post("/v1/classify", json={"text": "好"}),
            (await client.get("/healthz")),
        )

    ready, classify, health = call(app, fn)
    # the unauthenticated probes say what kind of failure, the log says which file (no path leaks to clients)
    assert ready.status_code == 503 and "ArtifactError" in ready.json()["error"]["message"]
    assert str(tmp_path) not in ready.text + classify.text + health.text
    assert classify.status_code == 503 and classify.headers["retry-after"].isdigit()
    assert health.status_code == 503  # liveness fails: the orchestrator restarts the process
    assert any("sha256 mismatch" in r.message and "vocab.txt" in r.message for r in caplog.records)


def test_api_keys_protect_classify_but_not_health(int8_artifact):
    app = create_app(settings_for(int8_artifact, api_keys="k1,k2"))

    async def fn(client):
        return (
            await client.post("/v1/classify", json={"text": "好"}),
            await client.post("/v1/classify", json={"text": "好"}, headers={"authorization": "Bearer nope"}),
            await client.post("/v1/classify", json={"text": "好"}, headers={"authorization": "Bearer k2"}),
            await client.get("/healthz"),
            await client.get("/metrics"),
        )

    missing, wrong, right, health, metrics = call(app, fn)
    assert missing.status_code == wrong.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer" and "Bearer" in missing.json()["error"]["hint"]
    assert right.status_code == 200 and health.status_code == 200 and metrics.status_code == 200


def test_docs_are_served_without_a_cdn(app):
    async def fn(client):
        docs = await client.get("/docs")
        schema = await client.get("/openapi.json")
        return docs, schema

    docs, schema = call(app, fn)
    assert docs.status_code == 200
    assert "cdn.jsdelivr.net" not in docs.text and "unpkg.com" not in docs.text
    request_schema = schema.json()["components"]["schemas"]["ClassifyRequest"]
    assert (
        request_schema["properties"]["texts"]["maxItems"] == 8
        and request_schema["properties"]["texts"]["minItems"] == 1
    )
    assert request_schema["oneOf"] == [{"required": ["text"]}, {"required": ["texts"]}]
    assert "送餐很快" in json.dumps(schema.json(), ensure_ascii=False)


def test_request_id_is_echoed_and_timeout_header_validated(app):
    async def fn(client):
        echoed = await client.post("/v1/classify", json={"text": "好"}, headers={"x-request-id": "abc-123"})
        bad = await client.post("/v1/classify", json={"text": "好"}, headers={"x-request-timeout-ms": "soon"})
        return echoed, bad

    echoed, bad = call(app, fn)
    assert echoed.headers["x-request-id"] == "abc-123"
    assert bad.status_code == 422 and "X-Request-Timeout-Ms" in bad.json()["error"]["message"]


@pytest.mark.parametrize(
    ("fmt", "precision"), [("paddle-fp32", "fp32"), ("paddle-int8", "int8-simulated"), ("onnx-fp32", "fp32")]
)
def test_other_backends_and_precisions_are_selectable(int8_artifact, fmt, precision):
    app = create_app(settings_for(int8_artifact, format=fmt))

    async def fn(client):
        return await client.post("/v1/classify", json={"texts": ["送餐很快", "太难吃了"]})

    body = call(app, fn).json()
    assert len(body["predictions"]) == 2
    assert body["model"]["precision"] == precision
    assert body["model"]["backend"] == ("paddle-inference" if fmt.startswith("paddle") else "onnxruntime")


def test_unknown_format_keeps_the_service_not_ready_with_the_choices(int8_artifact, caplog):
    app = create_app(settings_for(int8_artifact, format="tensorrt"))

    async def fn(client):
        return await client.get("/readyz")

    ready = call(app, fn)
    assert ready.status_code == 503 and "ArtifactError" in ready.json()["error"]["message"]
    assert any("onnx-int8" in r.message and "ERNIE_CLS_FORMAT" in r.message for r in caplog.records)


def test_serving_an_onnx_artifact_imports_no_paddle_and_unpickles_nothing(int8_artifact):
    """The ONNX serving path must not need Paddle (not in the serve extra) nor unpickle anything."""
    import subprocess
    import sys

    code = f"""
import pickle, sys
def refuse(*args, **kwargs):
    raise AssertionError("something unpickled on the serving path")
pickle.load = pickle.loads = pickle.Unpickler = refuse
from service.config import Settings
from service.engine import Engine
engine = Engine(Settings(artifact={str(int8_artifact)!r}, threads=1))
engine.load()
assert engine.backend is not None, engine.not_ready_reason
print(sorted(m for m in sys.modules if m.split(".")[0] in ("paddle", "paddlenlp")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_docs_can_require_the_api_key(int8_artifact):
    open_docs = create_app(settings_for(int8_artifact, api_keys="k1"))
    closed_docs = create_app(settings_for(int8_artifact, api_keys="k1", docs_require_auth=True))

    async def fn(client):
        return (
            (await client.get("/docs")).status_code,
            (await client.get("/openapi.json")).status_code,
            (await client.get("/openapi.json", headers={"authorization": "Bearer k1"})).status_code,
        )

    assert call(open_docs, fn) == (200, 200, 200)
    assert call(closed_docs, fn) == (401, 401, 200)


def test_fast_path_and_the_documented_fastapi_route_answer_alike(int8_artifact):
    """POST /v1/classify is served by an ASGI endpoint in front of FastAPI; the FastAPI route that documents it
    (reached when the fast path is bypassed) must give the same statuses, bodies and headers."""
    from fastapi import FastAPI

    app = create_app(settings_for(int8_artifact, api_keys="k1"))
    key = {"authorization": "Bearer k1"}
    cases = [
        ({"json": {"text": "送餐很快，味道不错"}}, key),
        ({"json": {"texts": ["好吃", "太难吃了"], "top_k": 2}}, key),
        ({"json": {"texts": ["好吃" * 40], "truncate": True}}, key),
        # a lone surrogate (escaped in the JSON): parsed like FastAPI parses it, normalised like in training
        ({"content": json.dumps({"text": "a\ud800b"})}, {**key, "content-type": "application/json"}),
        ({"json": {"texts": ["好吃" * 40]}}, key),
        ({"json": {"texts": []}}, key),
        ({"json": {"text": "好", "texts": ["好"]}}, key),
        ({"json": {"text": " \u200b "}}, key),
        ({"json": {"text": "好", "top_k": 0}}, key),
        ({"content": b'{"text": "'}, {**key, "content-type": "application/json"}),
        ({"content": b'{"text": "\xff"}'}, {**key, "content-type": "application/json"}),
        ({"content": b"[" * 3_000}, {**key, "content-type": "application/json"}),  # nested past the recursion limit
        ({"json": {"text": "好"}}, {**key, "x-request-timeout-ms": "soon"}),
        ({"json": {"text": "好"}}, {}),
        ({"json": {"text": "好"}}, {"authorization": "Bearer nope"}),
    ]
    compared = ("content-type", "retry-after", "www-authenticate", "x-queue-time-ms", "x-inference-time-ms")

    async def fn(_client):
        answers = []
        for target in (app, lambda s, r, se: FastAPI.__call__(app, s, r, se)):
            transport = httpx.ASGITransport(app=target)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                answers.append([await client.post("/v1/classify", headers=h, **kw) for kw, h in cases])
        return answers

    fast, documented = call(app, fn)
    for (kw, _), a, b in zip(cases, fast, documented, strict=True):
        assert a.status_code == b.status_code, (kw, a.text, b.text)
        assert a.json() == b.json(), kw
        assert {h: h in a.headers for h in compared} == {h: h in b.headers for h in compared}, kw
        assert a.headers["content-type"] == b.headers["content-type"] == "application/json"
    assert [a.status_code for a in fast] == [200] * 4 + [422] * 9 + [401] * 2
    assert "nested too deeply" in fast[-4].json()["error"]["message"]


def test_each_classify_request_leaves_one_log_line_without_its_text(int8_artifact, caplog):
    app = create_app(settings_for(int8_artifact))
    texts = ["送餐很快，味道不错", "太难吃了"]

    async def fn(client):
        ok = await client.post("/v1/classify", json={"texts": texts}, headers={"X-Request-ID": "trace-1"})
        await client.post("/v1/classify", json={"texts": []}, headers={"X-Request-ID": "trace-2"})
        return ok

    with caplog.at_level("INFO", logger="ernie_cls.requests"):
        ok = call(app, fn)
    lines = {r.fields["request_id"]: r.fields for r in caplog.records if r.name == "ernie_cls.requests"}
    assert set(lines) == {"trace-1", "trace-2"}  # one line per request, failed ones too
    one, predictions = lines["trace-1"], ok.json()["predictions"]
    assert one["status"] == 200 and one["error"] is None and one["texts"] == 2 and one["lengths"] == [9, 4]
    assert one["labels"] == [p["label"] for p in predictions]
    assert one["scores"] == [round(p["score"], 4) for p in predictions]
    assert one["low_confidence"] == [p["low_confidence"] for p in predictions] and one["truncated"] == [False, False]
    assert (one["model"], one["version"], one["format"]) == ("tiny-int8", "1", "onnx-int8")
    assert one["total_ms"] > 0 and one["inference_ms"] == float(ok.headers["x-inference-time-ms"])
    from service.__main__ import JsonFormatter, PlainFormatter

    written = "".join(
        f.format(r)
        for r in caplog.records
        if r.name == "ernie_cls.requests"
        for f in (JsonFormatter(), PlainFormatter())
    )  # the lines as `python -m service` writes them, JSON or plain
    assert "text" not in one and "trace-1" in written and not any(t in written for t in texts)
    two = lines["trace-2"]
    assert two["status"] == 422 and two["error"] == "validation_error" and two["texts"] is None


def test_texts_are_logged_only_when_asked_and_json_logs_keep_the_fields_as_keys(int8_artifact, caplog):
    import logging

    from service.__main__ import JsonFormatter

    app = create_app(settings_for(int8_artifact, log_texts=True))

    async def fn(client):
        return await client.post("/v1/classify", json={"text": "送餐很快"})

    with caplog.at_level("INFO", logger="ernie_cls.requests"):
        call(app, fn)
    (record,) = [r for r in caplog.records if r.name == "ernie_cls.requests"]
    assert record.fields["text"] == ["送餐很快"]
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == record.fields["request_id"] and line["text"] == ["送餐很快"]
    assert line["logger"] == "ernie_cls.requests" and line["level"] == "info"
    quiet = create_app(settings_for(int8_artifact, log_requests=False))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ernie_cls.requests"):
        call(quiet, fn)
    assert not [r for r in caplog.records if r.name == "ernie_cls.requests"]


def test_requests_the_guard_refuses_leave_a_log_line_too(int8_artifact, caplog):
    app = create_app(settings_for(int8_artifact, api_keys=["k1"]))
    auth = {"Authorization": "Bearer k1"}

    async def fn(client):
        await client.post("/v1/classify", json={"text": "好"}, headers={"X-Request-ID": "no-key"})
        await client.post(
            "/v1/classify", content=b"x", headers={**auth, "X-Request-ID": "plain", "Content-Type": "text/plain"}
        )
        big = b'{"texts": ["' + b"a" * 5000 + b'"]}'
        await client.post(
            "/v1/classify", content=big, headers={**auth, "X-Request-ID": "big", "Content-Type": "application/json"}
        )

    with caplog.at_level("INFO", logger="ernie_cls.requests"):
        call(app, fn)
    lines = {r.fields["request_id"]: r.fields for r in caplog.records if r.name == "ernie_cls.requests"}
    assert {k: (v["status"], v["texts"]) for k, v in lines.items()} == {
        "no-key": (401, None),
        "plain": (415, None),
        "big": (413, None),
    }
    assert all(line["error"] for line in lines.values())
