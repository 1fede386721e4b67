"""The real `python -m service` process (uvicorn): start, ready, classify, drain on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(artifact: Path, **env: str) -> tuple[subprocess.Popen, str, float]:
    port = free_port()
    environment = {
        **os.environ,
        "ERNIE_CLS_ARTIFACT": str(artifact),
        "ERNIE_CLS_PORT": str(port),
        "ERNIE_CLS_THREADS": "1",
        **env,
    }
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "service"],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    while time.monotonic() - started < 30:
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return proc, base, time.monotonic() - started
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise AssertionError(f"service exited: {proc.stdout.read() if proc.stdout else ''}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("service not ready within 30 s")


def queued(base: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=2).text
    return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith("ernie_cls_queue_texts{"))


@pytest.fixture
def service(int8_artifact):
    proc, base, ready_after = start_service(int8_artifact)
    yield proc, base, ready_after
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_real_process_is_ready_fast_and_classifies(service):
    _, base, ready_after = service
    assert ready_after < 15  # includes interpreter start and imports; docs/benchmarks.md has the measured figure
    r = httpx.post(f"{base}/v1/classify", json={"texts": ["送餐很快", "太难吃了"]}, timeout=10)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 2


def test_sigterm_drains_accepted_requests_then_exits(int8_artifact):
    # A long batching wait keeps the accepted requests queued while the signal arrives.
    proc, base, _ = start_service(int8_artifact, ERNIE_CLS_MAX_WAIT_MS="3000", ERNIE_CLS_CACHE_SIZE="0")
    with ThreadPoolExecutor(16) as pool:
        futures = [
            pool.submit(httpx.post, f"{base}/v1/classify", json={"text": f"评论{i}"}, timeout=20) for i in range(16)
        ]
        deadline = time.monotonic() + 5
        while queued(base) < 16 and time.monotonic() < deadline:  # all accepted, none answered yet
            time.sleep(0.02)
        assert queued(base) == 16
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(httpx.HTTPError):  # no new connections once draining
            httpx.get(f"{base}/healthz", timeout=1)
        statuses = [f.result().status_code for f in futures]
    assert statuses == [200] * 16  # nothing accepted is lost
    assert proc.wait(timeout=25) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after draining
    log = proc.stdout.read() if proc.stdout else ""
    assert "Shutting down" in log and "Traceback" not in log
    # the request log (written through a queue, off the event loop) lost no line at exit
    requests = [json.loads(line) for line in log.splitlines() if '"logger": "ernie_cls.requests"' in line]
    assert len(requests) == 16 and all(r["status"] == 200 and r["texts"] == 1 for r in requests)


def test_real_process_serves_the_bundled_default_model_correctly():
    proc, base, ready_after = start_service(ROOT / "exported" / "waimai-sentiment")
    print(f"default model ready {ready_after:.2f} s after process start")  # figure in docs/benchmarks.md
    try:
        texts = [
            "送餐很快，味道很好，下次还点",
            "很好吃，服务也好，五星好评",
            "等了两个小时，饭都凉了，差评",
            "太难吃了，再也不点了",
        ]
        r = httpx.post(f"{base}/v1/classify", json={"texts": texts}, timeout=10)
        body = r.json()
        assert [p["label"] for p in body["predictions"]] == ["positive", "positive", "negative", "negative"]
        assert body["model"] == {
            "id": "waimai-sentiment",
            "variant": "stable",
            "manifest_sha256": body["model"]["manifest_sha256"],
            "name": "waimai-sentiment",
            "version": "1",
            "backend": "onnxruntime",
            "precision": "int8",
        }
    finally:
        proc.kill()
        proc.wait()


def test_bench_service_measures_the_real_service_against_the_raw_model(int8_artifact, tmp_path):
    out = tmp_path / "bench-service.json"
    done = subprocess.run(
        [sys.executable, "-m", "commands.main", "bench", "service", str(int8_artifact), "--texts", "80",
         "--duration", "1", "--concurrency", "2,8", "--raw-seconds", "0.2", "--pairs", "1", "--port", str(free_port()),
         "--workers", "1", "--own-core-pairs", "1", "--texts-per-request", "2", "--output", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 10_000
    names = [r["name"] for r in report["runs"]]
    assert names == [
        "length-aware c2", "length-aware c8", "open loop at 50% of max", "fifo c64", "batching off c32"
    ]  # fmt: skip
    for run in report["runs"]:
        assert run["failed"] == 0 and run["requests"] > 0, run
        assert run["items_per_second"] > 0 and run["latency_ms"]["p99"] >= run["latency_ms"]["p50"] > 0
    # the open loop runs at half the best closed-loop throughput, counted in texts whatever the texts per request
    top = max(r["items_per_second"] for r in report["runs"][:2])
    assert report["runs"][2]["items_per_second"] < 0.75 * top
    assert report["raw"]["ceiling"]["items_per_second"] > 0
    [pair] = report["c64_over_raw_ceiling_pairs"]  # the c64 target's evidence: raw and service back to back
    assert pair["raw_items_per_second"] > 0 and pair["service"]["failed"] == 0 and pair["service"]["concurrency"] == 64
    assert report["runs"][-1]["texts_per_batch"] == 1.0  # batching off really is one text per model call
    own = report["c64_over_raw_with_a_core_for_the_model"]
    if len(os.sched_getaffinity(0)) < 2:
        assert own is None
    else:  # the model thread really ran alone on its core, the rest of the server elsewhere
        assert own["model_thread_cores"] == [own["model_core"]] and own["model_core"] not in own["other_threads_cores"]
        [pair] = own["pairs"]
        assert pair["service"]["failed"] == 0 and pair["raw_items_per_second"] > 0 and own["ratio"] > 0
    # the exit code is the targets' verdict
    assert (done.returncode == 0) == all(t["passed"] for t in report["targets"].values() if t)


def test_bench_bodies_carry_the_texts_per_request_asked(tmp_path):
    from bench.serving import _write_bodies

    texts = [f"第{i}条评论" for i in range(10)]
    one = [json.loads(x) for x in _write_bodies(tmp_path / "a", texts).read_text(encoding="utf-8").splitlines()]
    four = [json.loads(x) for x in _write_bodies(tmp_path / "b", texts, 4).read_text(encoding="utf-8").splitlines()]
    assert one == [{"text": t} for t in texts]
    assert [len(b["texts"]) for b in four] == [4, 4, 2] and [t for b in four for t in b["texts"]] == texts


def test_sighup_reloads_the_models_file_and_a_broken_one_keeps_the_old_version(int8_artifact, tmp_path):
    from tests.test_models import versioned

    v1, v2 = versioned(int8_artifact, tmp_path, "1"), versioned(int8_artifact, tmp_path, "2")
    models = tmp_path / "models.toml"
    models.write_text(f'[models.sentiment]\nartifact = "{v1}"\n', encoding="utf-8")
    proc, base, _ = start_service(int8_artifact, ERNIE_CLS_MODELS=str(models))

    def version_after_sighup(changes: bool) -> str:
        generation = httpx.get(f"{base}/v1/models", timeout=5).json()["generation"]
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + (15 if changes else 2)  # a refused reload leaves the generation as it was
        while time.monotonic() < deadline:
            if httpx.get(f"{base}/v1/models", timeout=5).json()["generation"] != generation:
                break
            time.sleep(0.1)
        return httpx.post(f"{base}/v1/classify", json={"text": "好吃"}, timeout=5).json()["model"]["version"]

    try:
        assert httpx.post(f"{base}/v1/classify", json={"text": "好吃"}, timeout=5).json()["model"]["version"] == "1"
        models.write_text(f'[models.sentiment]\nartifact = "{v2}"\n', encoding="utf-8")
        assert version_after_sighup(changes=True) == "2"
        models.write_text(f'[models.sentiment]\nartifact = "{tmp_path / "absent"}"\n', encoding="utf-8")
        assert version_after_sighup(changes=False) == "2"  # refused: still serving
        assert httpx.get(f"{base}/readyz", timeout=5).status_code == 200
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "reload refused" in out and "absent" in out  # the log says why
