"""Issue 15: each defect the service review found, as the input that triggered it (each failed on main a0f9293).

Live tests run the real app under uvicorn in this process on the bundled model (tests/reliability/conftest.py's
LiveService), so a test can hold a model instance while clients talk HTTP; the rest use httpx's ASGI transport.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from ernie_cls.artifact import ArtifactError, sha256_file, verify_artifact
from ernie_cls.machine import usable_cores
from service.api.guards import GuardMiddleware
from service.batching import Batcher
from service.main import create_app
from tests.reliability.conftest import DEFAULT_ARTIFACT, LiveService
from tests.test_service_api import call, settings_for

KEY = {"authorization": "Bearer k1"}


def chunked_request(port: int, body_chunks: list[bytes]) -> bytes:
    """Send a chunked POST /v1/classify and return the status line (the server may close before the end)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        try:
            for chunk in body_chunks:
                s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            s.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # answered and closed before the end of the body
        return s.recv(200).split(b"\r\n", 1)[0]


# ------------------------------------------------------------------------------------- 1. the spinning event loop
@pytest.mark.parametrize("chunked", [True, False])
def test_valid_json_prefix_then_an_over_limit_body_gets_413_and_the_loop_stays_free(chunked):
    with LiveService(max_body_bytes=65_536) as svc:
        prefix = b'{"text": "hi"}'
        if chunked:
            status = chunked_request(svc.port, [prefix] + [b" " * 16_384] * 8)
        else:  # the non-chunked form is refused on its declared length (a regression check: main did this too)
            body = prefix + b" " * 70_000
            status = f"HTTP/1.1 {httpx.post(f'{svc.base}/v1/classify', content=body, headers={'content-type': 'application/json'}, timeout=5).status_code}".encode()  # noqa: E501
        assert b" 413" in status
        started = time.monotonic()
        for _ in range(3):  # on main the loop spun on the synthetic end of body and this timed out
            assert httpx.get(f"{svc.base}/healthz", timeout=0.5).status_code == 200
        assert time.monotonic() - started < 1.0
        assert httpx.post(f"{svc.base}/v1/classify", json={"text": "送餐很快"}, timeout=5).status_code == 200


def test_a_body_that_never_ends_gets_408_and_frees_its_slot():
    with LiveService(body_timeout_s=0.5) as svc, socket.create_connection(("127.0.0.1", svc.port)) as s:
        s.sendall(
            b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        s.settimeout(5)
        assert s.recv(200).startswith(b"HTTP/1.1 408")
        assert svc.app.state.engine is not None and httpx.get(f"{svc.base}/healthz", timeout=1).status_code == 200


# ------------------------------------------------------------------------------------- 2. stuck model, ready service
def test_a_hung_single_instance_makes_readiness_fail_and_requests_fail_fast_then_recovers():
    with LiveService(workers=1, inference_timeout_s=0.5, cache_size=0, max_wait_ms=1) as svc:
        svc.close_gates()  # the next model call hangs
        with httpx.Client(base_url=svc.base, timeout=10) as client:
            hung = client.post("/v1/classify", json={"text": "卡住"}, headers={"x-request-timeout-ms": "3000"})
            assert hung.status_code == 504 and hung.json()["error"]["type"] == "inference_timeout"
            ready = client.get("/readyz")
            assert ready.status_code == 503 and "stuck" in ready.json()["error"]["message"]
            started = time.monotonic()
            fast = client.post("/v1/classify", json={"text": "下一个"})
            assert fast.status_code == 503 and fast.headers["retry-after"].isdigit()
            assert time.monotonic() - started < 1.0  # refused at once, not after its deadline
            svc.open_gates()
            deadline = time.monotonic() + 5
            while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert client.get("/readyz").status_code == 200
            assert client.post("/v1/classify", json={"text": "恢复了"}).status_code == 200


def test_inference_timeout_counts_from_when_a_worker_takes_the_batch():
    """A batch waiting behind a slow (not stuck) call is not 'inference took too long' and not a fault."""

    def slow(ids: np.ndarray, _types: np.ndarray) -> np.ndarray:
        time.sleep(0.3)
        return np.zeros((ids.shape[0], 2), dtype=np.float32)

    async def main() -> tuple[list, int, int]:
        batcher = Batcher(slow, pad_id=0, max_batch_size=1, max_wait_s=0.0, inference_timeout_s=0.45)
        batcher.start()
        try:
            far = time.monotonic() + 10
            results = await asyncio.gather(*(batcher.submit([[1, 2]], far) for _ in range(3)), return_exceptions=True)
            return results, batcher.stats.timed_out_batches, batcher.consecutive_faults
        finally:
            await batcher.stop()

    results, timed_out, faults = asyncio.run(main())
    assert not [r for r in results if isinstance(r, Exception)] and timed_out == 0 and faults == 0


# ------------------------------------------------------------------------------------- 3. admission and expansion
def test_normalisation_that_expands_past_the_cap_is_refused_or_truncated(int8_artifact):
    app = create_app(settings_for(int8_artifact, max_chars_per_text=50))

    async def fn(client):
        grows = "\ufdfa" * 10  # 10 characters as sent, 180 after NFKC
        return (
            await client.post("/v1/classify", json={"text": grows}),
            await client.post("/v1/classify", json={"text": grows, "truncate": True}),
        )

    refused, cut = call(app, fn)
    assert refused.status_code == 422 and "after Unicode normalisation" in refused.json()["error"]["message"]
    assert cut.status_code == 200 and cut.json()["predictions"][0]["truncated"] is True


async def fill_queue(client: httpx.AsyncClient, svc: LiveService, texts: int) -> list[asyncio.Future]:
    """With the model gated: send one-text requests until `texts` wait in the queue (one more may be inside the
    gated model, and one may get 429 while the worker has not taken its batch yet); their futures, to await later."""
    held: list[asyncio.Future] = []
    deadline = time.monotonic() + 10
    while svc.engine.batcher.queued_texts < texts:
        assert time.monotonic() < deadline, "the queue did not fill"
        held.append(asyncio.ensure_future(client.post("/v1/classify", json={"text": f"占{len(held)}"})))
        await asyncio.sleep(0.05)
    return held


def test_a_full_queue_refuses_before_normalising_anything(monkeypatch):
    import service.engine as engine_module

    calls = {"n": 0}
    real = engine_module.normalize_text

    def counting(text: str) -> str:
        calls["n"] += 1
        return real(text)

    with LiveService(workers=1, queue_capacity=2, max_batch_size=1, cache_size=0, max_wait_ms=1) as svc:
        svc.close_gates()

        async def fill_then_try() -> tuple[int, int]:
            async with httpx.AsyncClient(base_url=svc.base, timeout=10) as client:
                held = await fill_queue(client, svc, texts=2)
                monkeypatch.setattr(engine_module, "normalize_text", counting)
                refused = await client.post("/v1/classify", json={"texts": ["\ufdfa" * 2000] * 60, "truncate": True})
                svc.open_gates()
                await asyncio.gather(*held)
                return refused.status_code, calls["n"]

        status, normalised = asyncio.run(fill_then_try())
    assert status == 429 and normalised == 0


def test_a_large_request_does_not_hold_the_event_loop():
    """64 texts that NFKC expands 18x took ~2 s of the event loop on main; a probe task measures its lateness."""
    with LiveService(cache_size=0) as svc:
        loop = svc.engine.batcher._task.get_loop()
        lateness: list[float] = []

        async def probe() -> None:
            while True:
                before = loop.time()
                await asyncio.sleep(0.005)
                lateness.append(loop.time() - before - 0.005)

        task = asyncio.run_coroutine_threadsafe(probe(), loop)
        time.sleep(0.2)
        body = {"texts": ["\ufdfa" * 2000] * 64, "truncate": True}
        reply = httpx.post(f"{svc.base}/v1/classify", json=body, timeout=60)
        task.cancel()
    assert reply.status_code == 200 and all(p["truncated"] for p in reply.json()["predictions"])
    assert max(lateness) < 0.1, f"event loop held {max(lateness) * 1000:.0f} ms"


# ------------------------------------------------------------------------------------- 4. 500s from client input
# b"\xb2" is "²" read as latin-1, as servers read header bytes: str.isdigit() accepts it and int() does not (a 500 on
# main, as did 5 000 digits); the rest guard the range and the form.
@pytest.mark.parametrize("value", [b"\xb2", b"\xb3\xb9", b"9" * 5000, b"0", b"600001", b"1e3", b"-5", "５".encode()])
def test_bad_timeout_headers_get_422_on_both_paths(int8_artifact, value):
    from fastapi import FastAPI

    app = create_app(settings_for(int8_artifact))

    async def fn(_client):
        out = []
        for target in (app, lambda s, r, se: FastAPI.__call__(app, s, r, se)):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=target), base_url="http://t") as client:
                out.append(
                    await client.post("/v1/classify", json={"text": "好"}, headers={"x-request-timeout-ms": value})
                )
        return out

    for reply in call(app, fn):
        assert reply.status_code == 422 and "X-Request-Timeout-Ms" in reply.json()["error"]["message"]


@pytest.mark.parametrize("digits", [4301, 100_000])
def test_integers_past_the_parsers_digit_limit_get_422_saying_so_on_both_paths(int8_artifact, digits):
    from fastapi import FastAPI

    app = create_app(settings_for(int8_artifact, max_body_bytes=200_000))
    body = b'{"text": "a", "top_k": ' + b"7" * digits + b"}"

    async def fn(_client):
        out = []
        for target in (app, lambda s, r, se: FastAPI.__call__(app, s, r, se)):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=target), base_url="http://t") as client:
                out.append(
                    await client.post("/v1/classify", content=body, headers={"content-type": "application/json"})
                )
        return out

    for reply in call(app, fn):
        assert reply.status_code == 422 and "number too long" in reply.json()["error"]["message"], reply.text


@pytest.mark.parametrize("declared", [b"\xb2", b"9" * 5000, b"-1", b"1e3", "１２".encode()])
def test_content_length_that_is_not_a_number_gets_400_not_500(declared):
    async def app(scope, receive, send):
        raise AssertionError("the app must not run")

    guard = GuardMiddleware(app, max_body_bytes=1024)
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/classify",
        "headers": [(b"content-type", b"application/json"), (b"content-length", declared)],
    }
    asyncio.run(guard(scope, receive, send))
    assert sent[0]["status"] == 400 and b"Content-Length" in sent[1]["body"]


# ------------------------------------------------------------------------------------- 5. drain
def test_replies_say_connection_close_while_draining_and_drain_timeouts_are_not_rounded(int8_artifact):
    from service.__main__ import uvicorn_config

    app = create_app(settings_for(int8_artifact))

    async def fn(client):
        before = await client.get("/healthz")
        app.state.registry.start_draining()
        return before, await client.get("/healthz"), await client.post("/v1/classify", json={"text": "好"})

    before, health, classify = call(app, fn)
    assert "connection" not in before.headers
    assert health.headers["connection"] == "close" and classify.headers["connection"] == "close"
    assert classify.status_code == 200  # accepted while draining: answered
    half = settings_for(int8_artifact, drain_timeout_s=0.5)
    assert uvicorn_config(half, create_app(half)).timeout_graceful_shutdown == 0.5  # main: int(0.5) or None = for ever


def test_the_lifespan_waits_only_what_is_left_of_the_drain_timeout(int8_artifact):
    """uvicorn waits up to the drain timeout for connections, then the lifespan runs: main waited the whole timeout
    again there (and for ever on a hung model call). With the timeout spent, shutdown takes about half a second."""
    import threading

    app = create_app(settings_for(int8_artifact, drain_timeout_s=20, cache_size=0))
    release = threading.Event()

    async def main() -> tuple[float, BaseException | None]:
        async with app.router.lifespan_context(app):
            await app.state.loading
            engine = app.state.engine
            for backend in engine.backends:  # the model hangs: the request below stays in flight
                real = backend.infer
                backend.infer = lambda ids, types, real=real: (release.wait(30), real(ids, types))[1]
            pending = asyncio.ensure_future(engine.classify(["卡住了"], 1, False, time.monotonic() + 30))
            await asyncio.sleep(0.2)
            app.state.registry.start_draining()
            app.state.registry.draining_since -= 20  # uvicorn already spent the drain timeout on open connections
            started = time.monotonic()
        took = time.monotonic() - started
        release.set()
        outcome = (await asyncio.gather(pending, return_exceptions=True))[0]
        return took, outcome if isinstance(outcome, BaseException) else None

    took, outcome = asyncio.run(main())
    assert took < 3.0, f"shutdown took {took:.1f} s with the drain timeout already spent"
    assert outcome is not None and getattr(outcome, "http_status", None) == 503  # told to retry elsewhere


# ------------------------------------------------------------------------------------- 6. the manifest itself
def _copy(tmp_path: Path) -> Path:
    copy = tmp_path / "a"
    shutil.copytree(DEFAULT_ARTIFACT, copy)
    return copy


def _swap_labels(root: Path) -> None:
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    manifest["labels"] = {"0": "positive", "1": "negative"}
    (root / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2), encoding="utf-8")


def test_a_pinned_manifest_refuses_swapped_labels(tmp_path):
    copy = _copy(tmp_path)
    pin = verify_artifact(copy).manifest_sha256
    assert pin == sha256_file(copy / "manifest.json")  # what `export` and `verify` print is the pin the service takes
    _swap_labels(copy)
    assert verify_artifact(copy).labels == ["positive", "negative"]  # unpinned, an edited label map is self-consistent
    with pytest.raises(ArtifactError, match="pinned"):
        verify_artifact(copy, pin)
    with LiveService(artifact=str(DEFAULT_ARTIFACT), artifact_sha256=pin) as svc:  # the pin, shown by /v1/models
        assert httpx.get(f"{svc.base}/v1/models", timeout=5).json()["manifest_sha256"] == pin


@pytest.mark.parametrize("rel", ["../outside.txt", "/etc/hostname", "tokenizer/../../outside.txt", "link/x"])
def test_manifest_paths_that_leave_the_artifact_are_refused(tmp_path, rel):
    copy = _copy(tmp_path)
    (tmp_path / "outside.txt").write_text("x")
    (copy / "link").symlink_to(tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text(encoding="utf-8"))
    manifest["files"][rel] = {"sha256": "0" * 64, "size": 1}
    (copy / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(ArtifactError, match="leaves the artifact"):
        verify_artifact(copy)


def test_a_file_swapped_after_verification_is_not_loaded(tmp_path):
    copy = _copy(tmp_path)
    artifact = verify_artifact(copy)
    rel = artifact.manifest["formats"][artifact.manifest["default_format"]]["path"]
    (copy / rel).write_bytes(b"not the model that was hashed")
    with pytest.raises(ArtifactError, match="changed since it was verified"):
        artifact.read_verified(rel)


# ------------------------------------------------------------------------------------- 7. metrics and logs
def test_siblings_of_a_failed_text_are_not_counted_as_disconnected():
    def fail_first(ids: np.ndarray, _types: np.ndarray) -> np.ndarray:
        time.sleep(0.05)
        if ids[0, 0] == 7:
            raise RuntimeError("backend exploded")
        return np.zeros((ids.shape[0], 2), dtype=np.float32)

    async def main() -> tuple[int, int]:
        batcher = Batcher(fail_first, pad_id=0, max_batch_size=1, max_wait_s=0.0)
        batcher.start()
        try:
            with pytest.raises(Exception, match="Inference failed"):
                await batcher.submit([[7], [8], [9]], time.monotonic() + 10)
            return batcher.stats.dropped_disconnected, batcher.stats.dropped_request_failed
        finally:
            await batcher.stop()

    disconnected, request_failed = asyncio.run(main())
    assert disconnected == 0 and request_failed >= 1


def test_a_500_logs_the_request_id_it_asks_the_user_to_quote(caplog):
    with LiveService(cache_size=0) as svc:
        svc.gates[0].fault = "raise"
        reply = httpx.post(
            f"{svc.base}/v1/classify", json={"text": "坏了"}, headers={"x-request-id": "rid-42"}, timeout=5
        )
    assert reply.status_code == 500 and "X-Request-ID" in reply.json()["error"]["hint"]
    assert any("rid-42" in record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR)


# ------------------------------------------------------------------------------------- 8. idle connections
def test_idle_connections_do_not_take_health_down():
    """main set uvicorn's limit_concurrency (2 x queue capacity), which counts idle sockets and 503s every route."""
    from tests.test_service_process import start_service

    proc, base, _ = start_service(DEFAULT_ARTIFACT, ERNIE_CLS_QUEUE_CAPACITY="32", ERNIE_CLS_WORKERS="1")
    port = int(base.rsplit(":", 1)[1])
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(150)]
    try:
        time.sleep(0.3)
        assert httpx.get(f"{base}/healthz", timeout=2).status_code == 200
        assert httpx.post(f"{base}/v1/classify", json={"text": "好吃"}, timeout=5).status_code == 200
    finally:
        for s in idle:
            s.close()
        proc.kill()
        proc.wait()


# ------------------------------------------------------------------------------------- 9. HTTP manners
def test_http_manners(int8_artifact):
    from fastapi import FastAPI

    app = create_app(settings_for(int8_artifact, api_keys="k1,ключ"))

    async def fn(client):
        both = []
        for target in (app, lambda s, r, se: FastAPI.__call__(app, s, r, se)):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=target), base_url="http://t") as c:
                both.append(
                    (
                        await c.post("/v1/classify", content=b"{bad", headers={"content-type": "application/json"}),
                        await c.post(
                            "/v1/classify",
                            json={"text": "好"},
                            headers=[("authorization", "Bearer nope"), ("authorization", "Bearer k1")],
                        ),
                    )
                )
        return (
            await client.head("/healthz"),
            await client.head("/readyz"),
            await client.delete("/healthz"),
            await client.post("/v1/classify", json={"text": "好"}, headers={"authorization": "Bearer ключ".encode()}),
            both,
        )

    head, head_ready, wrong_method, utf8_key, both = call(app, fn)
    assert head.status_code == 200 and head_ready.status_code == 200
    assert wrong_method.status_code == 405 and "GET" in wrong_method.headers["allow"]
    assert utf8_key.status_code == 200
    for no_key_bad_json, duplicate in both:  # the fast path and FastAPI's route agree: the key is checked first
        assert no_key_bad_json.status_code == 401 and duplicate.status_code == 401
        assert "several Authorization" in duplicate.json()["error"]["message"]


# ------------------------------------------------------------------------------------- 10. start-up
def test_cgroup_cpu_quota_bounds_the_default_instance_count(tmp_path):
    (tmp_path / "cpu.max").write_text("200000 100000\n")
    assert usable_cores(tmp_path) == min(2, len(os.sched_getaffinity(0)))
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert usable_cores(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cores(tmp_path) == len(os.sched_getaffinity(0))
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert usable_cores(v1) == 1


def test_the_socket_answers_while_the_model_loads(int8_artifact):
    app = create_app(settings_for(int8_artifact, workers=2))

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            early = await c.get("/readyz"), await c.get("/healthz")
            await app.state.loading
            return early, await c.get("/readyz")

    (ready_early, health_early), ready_later = asyncio.run(main())
    assert ready_early.status_code == 503 and "loading" in ready_early.json()["error"]["message"]
    assert health_early.status_code == 200 and ready_later.status_code == 200


# ------------------------------------------------------------------------------------- found by the review of this work
def test_stop_returns_while_an_instance_is_stuck_and_fails_what_waits():
    """A hung call and a batch queued behind it kept Batcher.stop() (and so SIGTERM) waiting for ever."""
    import threading

    release = threading.Event()

    def hang(ids: np.ndarray, _types: np.ndarray) -> np.ndarray:
        release.wait(30)
        return np.zeros((ids.shape[0], 2), dtype=np.float32)

    async def main() -> tuple[float, list]:
        batcher = Batcher(hang, pad_id=0, max_batch_size=1, max_wait_s=0.0, inference_timeout_s=0.3)
        batcher.start()
        far = time.monotonic() + 30
        waiting = [asyncio.ensure_future(batcher.submit([[i]], far)) for i in range(3)]
        await asyncio.sleep(0.6)
        started = time.monotonic()
        await batcher.stop(timeout_s=0.5)
        took = time.monotonic() - started
        results = await asyncio.gather(*waiting, return_exceptions=True)
        release.set()
        return took, results

    took, results = asyncio.run(main())
    assert took < 2.0 and all(isinstance(r, Exception) for r in results)


def test_a_large_request_past_its_deadline_stops_preparing_and_small_ones_are_not_stuck_behind_it():
    with LiveService(cache_size=0) as svc:
        heavy = {"texts": ["\ufdfa" * 2000] * 64, "truncate": True}

        async def main() -> tuple[list, float, int]:
            async with httpx.AsyncClient(base_url=svc.base, timeout=30) as client:
                late = [
                    asyncio.ensure_future(
                        client.post("/v1/classify", json=heavy, headers={"x-request-timeout-ms": "300"})
                    )
                    for _ in range(4)
                ]
                await asyncio.sleep(0.1)
                started = time.monotonic()
                small = await client.post("/v1/classify", json={"text": "送餐很快" * 80})  # 320 characters
                small_s = time.monotonic() - started
                return [r.status_code for r in await asyncio.gather(*late)], small_s, small.status_code

        late, small_s, small_status = asyncio.run(main())
    # each is refused (429: the queue-time bound) or stopped at its deadline (504); none runs on after it
    assert set(late) <= {504, 429} and 504 in late and small_status == 200
    assert small_s < 1.5, f"a 320-character request waited {small_s:.2f} s behind expired large ones"


def test_a_full_queue_refuses_before_the_body_is_parsed_cached_texts_included(monkeypatch):
    """Under a flood the cheapest refusal protects the rest: with no room for one more text, 429 comes before the body
    is parsed (a 600-connection flood of 64-text requests pushed /healthz to 543 ms when every body was parsed
    first). A cached text is refused too; it is served again as soon as the queue has room."""
    import service.api.classify as classify_module

    parsed = {"n": 0}
    real = classify_module.parse_json

    def counting(raw: bytes):
        parsed["n"] += 1
        return real(raw)

    with LiveService(workers=1, queue_capacity=2, max_batch_size=1, cache_size=100, max_wait_ms=1) as svc:
        assert httpx.post(f"{svc.base}/v1/classify", json={"text": "已缓存"}, timeout=5).status_code == 200
        svc.close_gates()

        async def main() -> tuple[httpx.Response, int]:
            async with httpx.AsyncClient(base_url=svc.base, timeout=10) as client:
                held = await fill_queue(client, svc, texts=2)
                monkeypatch.setattr(classify_module, "parse_json", counting)
                refused = await client.post("/v1/classify", json={"text": "已缓存"})
                svc.open_gates()
                await asyncio.gather(*held)
                again = await client.post("/v1/classify", json={"text": "已缓存"})
                return refused, again.status_code

        refused, again = asyncio.run(main())
    assert refused.status_code == 429 and refused.headers["retry-after"].isdigit()
    assert parsed["n"] == 1 and again == 200  # only the request after the queue drained was parsed


def test_the_app_serves_again_after_its_lifespan_restarts(int8_artifact):
    app = create_app(settings_for(int8_artifact))
    body = {"texts": ["送餐很快，味道不错" * 4] * 8}  # 288 characters, over the on-loop size: the prepare thread

    async def fn(client):
        return await client.post("/v1/classify", json=body)

    assert call(app, fn).status_code == 200
    assert call(app, fn).status_code == 200  # main-after-review: the prepare pool was shut down for good


def test_liveness_fails_once_every_instance_has_been_stuck_for_long():
    with LiveService(workers=1, inference_timeout_s=0.25, cache_size=0) as svc:
        svc.close_gates()
        with httpx.Client(base_url=svc.base, timeout=5) as client:
            client.post("/v1/classify", json={"text": "卡住"})
            assert client.get("/healthz").status_code == 200  # stuck, not for long yet: not ready, still alive
            time.sleep(1.0)  # 4 inference timeouts
            dead = client.get("/healthz")
            svc.open_gates()
    assert dead.status_code == 503 and "stuck" in dead.json()["error"]["message"]


def test_docs_401_carries_a_request_id(int8_artifact):
    app = create_app(settings_for(int8_artifact, api_keys="k1", docs_require_auth=True))

    async def fn(client):
        return await client.get("/openapi.json")

    reply = call(app, fn)
    assert reply.status_code == 401 and reply.headers["x-request-id"]
