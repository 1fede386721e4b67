"""Operating several models (issue 20's targets), on the real `python -m service` process:

    reload under load: c32 closed loop on the default model; reload to version 2, later roll back to version 1
      -> failed requests, p99 before vs during the swap, seconds from the rollback command to the first reply
         that version 1 answers
    two models: the same c32 load on model A with only A loaded, and with A and B loaded and both under c32 load,
      rounds alternated (the VM's speed drifts) -> each model's throughput as a share of the one-model figure

    python -m bench.operations --output reports/bench-operations.json      (make bench-operations)

The versions are copies of the artifact whose manifest says another version (same weights): what is measured is
the service's swap and sharing, not a model's speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.config import ServiceBenchConfig
from bench.loadgen import Connection, prepare
from bench.serving import ServerProcess, _shuffled_texts
from ernie_cls.machine import usable_cores

ADMIN_KEY = "bench-admin"


@dataclass
class Timeline:
    """One entry per reply: (sent, received, status, version that answered)."""

    replies: list[tuple[float, float, int, str]] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)


def versioned(artifact: Path, root: Path, version: str) -> Path:
    copy = root / f"v{version}"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(artifact, copy)
    manifest = json.loads((copy / "manifest.json").read_text(encoding="utf-8"))
    manifest["version"] = version
    (copy / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2), encoding="utf-8")
    return copy.resolve()  # the models file resolves relative paths against its own directory


def _version_of(head: bytes) -> str:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"x-model-version":
            return value.strip().decode("latin-1")
    return ""


def _admin(port: int, action: str) -> tuple[int, float]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/admin/{action}", method="POST", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return reply.status, time.perf_counter() - started
    except urllib.error.HTTPError as err:
        return err.code, time.perf_counter() - started


async def _closed_loop(raw: list[bytes], port: int, concurrency: int, stop: asyncio.Event, out: Timeline) -> None:
    async def worker(k: int) -> None:
        conn, i = Connection("127.0.0.1", port), k
        while not stop.is_set():
            sent = time.perf_counter()
            status = await conn.request(raw[i % len(raw)])
            out.replies.append((sent, time.perf_counter(), status, _version_of(conn.last_head)))
            i += concurrency
        conn.close()

    await asyncio.gather(*(worker(k) for k in range(concurrency)))


async def _reload_run(raw: list[bytes], port: int, models: Path, v2: Path, steady_s: float) -> Timeline:
    out, stop = Timeline(), asyncio.Event()
    load = asyncio.ensure_future(_closed_loop(raw, port, 32, stop, out))
    await asyncio.sleep(steady_s)
    models.write_text(f'[models.sentiment]\nartifact = "{v2}"\n', encoding="utf-8")
    out.marks["reload_sent"] = time.perf_counter()
    status, _ = await asyncio.to_thread(_admin, port, "reload")
    out.marks["reload_done"], out.marks["reload_status"] = time.perf_counter(), status
    await asyncio.sleep(steady_s)
    out.marks["rollback_sent"] = time.perf_counter()
    status, _ = await asyncio.to_thread(_admin, port, "rollback")
    out.marks["rollback_done"], out.marks["rollback_status"] = time.perf_counter(), status
    await asyncio.sleep(steady_s)
    stop.set()
    await load
    return out


def _p99(latencies: list[float]) -> float:
    return round(float(np.percentile(np.array(latencies) * 1000, 99)), 2) if latencies else 0.0


def summarize_reload(t: Timeline, warmup_s: float) -> dict:
    start = t.replies[0][0] + warmup_s if t.replies else 0.0
    m = t.marks
    before = [r - s for s, r, _, _ in t.replies if start <= s < m["reload_sent"]]
    # the swap: from the reload command until one second after it returned (loading, warming, swapping)
    during = [r - s for s, r, _, _ in t.replies if m["reload_sent"] <= s < m["reload_done"] + 1.0]
    after_rollback = [(r, v) for s, r, _, v in t.replies if s >= m["rollback_sent"] and v == "1"]
    statuses: dict[str, int] = {}
    for _, _, status, _ in t.replies:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {
        "requests": len(t.replies),
        "statuses": statuses,
        "failed": sum(n for s, n in statuses.items() if s != "200"),
        "reload_status": m["reload_status"],
        "reload_seconds": round(m["reload_done"] - m["reload_sent"], 3),
        "rollback_status": m["rollback_status"],
        "rollback_seconds": round(m["rollback_done"] - m["rollback_sent"], 3),
        "p99_ms_before": _p99(before),
        "p99_ms_during_swap": _p99(during),
        "p99_during_over_before": round(_p99(during) / max(_p99(before), 1e-9), 2),
        "rollback_visible_after_s": round(min(r for r, _ in after_rollback) - m["rollback_sent"], 3)
        if after_rollback
        else None,
        "versions_after_reload": sorted({v for s, _, _, v in t.replies if m["reload_done"] < s < m["rollback_sent"]}),
    }


def _models_file(path: Path, models: dict[str, Path]) -> Path:
    path.write_text("".join(f'[models.{n}]\nartifact = "{a}"\n' for n, a in models.items()), encoding="utf-8")
    return path


def run_operations_bench(cfg: ServiceBenchConfig, rounds: int, steady_s: float) -> dict:
    work = Path("runs/bench-operations")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    v1, v2 = versioned(Path(cfg.artifact), work, "1"), versioned(Path(cfg.artifact), work, "2")
    texts = _shuffled_texts(cfg)[: cfg.texts]
    bodies = [json.dumps({"text": t}, ensure_ascii=False).encode() for t in texts]
    env = {"ERNIE_CLS_ADMIN_KEYS": ADMIN_KEY, "ERNIE_CLS_LOG_REQUESTS": "false"}

    models = _models_file(work / "reload.toml", {"sentiment": v1})
    workers = cfg.workers or usable_cores()
    with ServerProcess(cfg, workers, work, ERNIE_CLS_MODELS=str(models), **env):
        raw = prepare(bodies, "127.0.0.1", cfg.port, "/v1/classify", {})
        reload = summarize_reload(asyncio.run(_reload_run(raw, cfg.port, models, v2, steady_s)), warmup_s=2.0)

    one, two = _models_file(work / "one.toml", {"a": v1}), _models_file(work / "two.toml", {"a": v1, "b": v2})
    a, b = "/v1/models/a/classify", "/v1/models/b/classify"
    rows = []
    for k in range(rounds):  # alternated: the VM's speed drifts
        row: dict[str, float] = {}
        for setup in ["one", "two"] if k % 2 == 0 else ["two", "one"]:
            with ServerProcess(cfg, workers, work, ERNIE_CLS_MODELS=str(one if setup == "one" else two), **env):
                if setup == "one":
                    row["one_model_a"] = asyncio.run(_busy(bodies, cfg.port, {"a": a}, cfg.duration))["a"]
                else:
                    row["two_loaded_only_a_busy"] = asyncio.run(_busy(bodies, cfg.port, {"a": a}, cfg.duration))["a"]
                    both = asyncio.run(_busy(bodies, cfg.port, {"a": a, "b": b}, cfg.duration))
                    row["both_busy_a"], row["both_busy_b"] = both["a"], both["b"]
        rows.append(row)
    alone = sum(r["one_model_a"] for r in rows)
    share = {m: round(sum(r[f"both_busy_{m}"] for r in rows) / alone, 3) for m in ("a", "b")}
    share["a_with_b_idle"] = round(sum(r["two_loaded_only_a_busy"] for r in rows) / alone, 3)
    return {
        "machine": "see docs/benchmarks.md",
        "reload_under_load_c32": reload,
        "two_models": {"rounds": rows, "share_of_one_model_throughput": share},
        "targets": {
            "reload: 0 failed": reload["failed"] == 0,
            "reload: p99 during swap <= 2x before": reload["p99_during_over_before"] <= 2.0,
            "rollback visible within 1 s": (reload["rollback_visible_after_s"] or 99) <= 1.0,
            "two models: each >= 45 % of one-model throughput": min(share["a"], share["b"]) >= 0.45,
        },
    }


async def _busy(bodies: list[bytes], port: int, paths: dict[str, str], seconds: float) -> dict[str, float]:
    """c32 closed loop on each of `paths` at once (different texts each) for `seconds` after 2 s of warm-up ->
    requests/s answered 200 per path."""
    share = len(bodies) // len(paths)
    timelines = {m: Timeline() for m in paths}
    stop = asyncio.Event()
    loads = [
        asyncio.ensure_future(
            _closed_loop(
                prepare(bodies[k * share : (k + 1) * share], "127.0.0.1", port, path, {}), port, 32, stop, timelines[m]
            )
        )
        for k, (m, path) in enumerate(paths.items())
    ]
    await asyncio.sleep(2 + seconds)
    stop.set()
    await asyncio.gather(*loads)
    out = {}
    for m, t in timelines.items():
        start = t.replies[0][0] + 2 if t.replies else 0.0
        out[m] = round(sum(1 for sent, _, status, _ in t.replies if sent >= start and status == 200) / seconds, 1)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", default="exported/waimai-sentiment")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steady", type=float, default=8.0, help="seconds of load before, between and after")
    parser.add_argument("--duration", type=float, default=12.0, help="measured seconds per throughput run")
    parser.add_argument("--output", default="reports/bench-operations.json")
    args = parser.parse_args(argv)
    cfg = ServiceBenchConfig(artifact=args.artifact, duration=args.duration, workers=0)
    random.seed(0)
    report = run_operations_bench(cfg, args.rounds, args.steady)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
