"""`ernie-cls bench model`: latency and throughput of every format in an artifact, side by side in one run.

    artifact -> for each format (paddle-fp32, paddle-int8, onnx-fp32, onnx-int8) a runner with `threads`
    -> for each (batch size, sequence length): synthetic token ids of exactly that shape, warm-up, then timed
       calls for at least `min_seconds` -> median and p90 latency, items/s
    -> JSON (with machine, thread count, command) + PNG plot

Formats are measured interleaved per shape (not one format after another), so a noisy neighbour or thermal drift
hits all of them alike and the ratios stay meaningful.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from bench.config import BenchConfig
from ernie_cls.artifact import verify_artifact
from ernie_cls.machine import usable_cores
from ernie_cls.runtime import RUNTIME_FORMATS, load_backend
from training.paddle_env import cpuinfo


def cpu_model() -> str:
    return cpuinfo("model name") or platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    flags = set(cpuinfo("flags").split())
    return sorted(f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags)


def synthetic_batch(vocab_size: int, batch: int, seq: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    ids = rng.integers(5, vocab_size, size=(batch, seq), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 1, 2  # [CLS] ... [SEP]
    return ids, np.zeros_like(ids)


def _time(runner, inputs, min_seconds: float) -> list[float]:
    runner(*inputs)  # warm-up (allocations, kernel selection)
    runner(*inputs)
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < min_seconds or len(times) < 5:
        t0 = time.perf_counter()
        runner(*inputs)
        times.append(time.perf_counter() - t0)
    return times


def run_bench(cfg: BenchConfig) -> dict:
    artifact = verify_artifact(cfg.artifact)
    available = [f for f in RUNTIME_FORMATS if f in artifact.spec.formats]
    formats = cfg.formats or available
    threads = cfg.threads or usable_cores()
    runners = {fmt: load_backend(artifact, fmt, threads) for fmt in formats}  # exactly as the service loads
    vocab_size = artifact.spec.vocab_size
    rng = np.random.default_rng(0)
    results = []
    for seq in cfg.seq_lens:
        for batch in cfg.batch_sizes:
            inputs = synthetic_batch(vocab_size, batch, seq, rng)
            for fmt, runner in runners.items():
                times = _time(runner.infer, inputs, cfg.min_seconds)
                median = statistics.median(times)
                results.append(
                    {
                        "format": fmt,
                        "batch_size": batch,
                        "seq_len": seq,
                        "runs": len(times),
                        "latency_ms_median": round(median * 1e3, 3),
                        "latency_ms_p90": round(float(np.percentile(times, 90)) * 1e3, 3),
                        "items_per_second": round(batch / median, 1),
                    }
                )
    report = {
        "artifact": artifact.spec.name,
        "threads": threads,
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "flags": cpu_flags(), "arch": platform.machine()},
        "command": "ernie-cls bench model " + " ".join(sys.argv[3:]) if len(sys.argv) > 3 else None,
        "results": results,
        "int8_vs_fp32": _ratios(results),
    }
    out = Path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    plot(report, out.with_suffix(".png"))
    return report


def _ratios(results: list[dict]) -> list[dict]:
    """Throughput of each INT8 format over its runtime's FP32 format, per shape."""
    index = {(r["format"], r["batch_size"], r["seq_len"]): r["items_per_second"] for r in results}
    ratios = []
    for (fmt, b, s), ips in index.items():
        base = f"{fmt.split('-')[0]}-fp32"
        if "int8" in fmt and (base, b, s) in index:
            ratios.append(
                {
                    "format": fmt,
                    "vs": base,
                    "batch_size": b,
                    "seq_len": s,
                    "speedup": round(ips / index[(base, b, s)], 3),
                }
            )
    return ratios


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    formats = sorted({r["format"] for r in results})
    seqs = sorted({r["seq_len"] for r in results})
    fig, axes = plt.subplots(1, len(seqs), figsize=(4 * len(seqs), 3.6), sharey=False, squeeze=False)
    for ax, seq in zip(axes[0], seqs, strict=True):
        for fmt in formats:
            rows = sorted(
                (r for r in results if r["format"] == fmt and r["seq_len"] == seq), key=lambda r: r["batch_size"]
            )
            ax.plot([r["batch_size"] for r in rows], [r["items_per_second"] for r in rows], marker="o", label=fmt)
        ax.set_xscale("log", base=2)
        ax.set_title(f"seq {seq}")
        ax.set_xlabel("batch size")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("items / s")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"{report['artifact']}: {report['machine']['cpu']}, {report['threads']} threads", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
