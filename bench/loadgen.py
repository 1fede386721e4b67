"""A low-overhead HTTP/1.1 load generator for benchmarks and soak runs, meant to run in its own process.

    request bodies (JSON lines) -> closed loop (N connections, each sends its next request when the last returns)
                                   or open loop (requests scheduled at a fixed rate, whatever the replies do)
    -> per request: status and latency -> JSON summary on stdout (counts by status, percentiles, throughput,
       the client's own CPU time so its overhead is on record)

Raw asyncio streams with keep-alive, no HTTP library: at a few hundred requests/s the client costs a few percent of
one core. In open loop the latency counts from the scheduled send time, so a stalled server cannot hide its queue
(no coordinated omission).

    python -m bench.loadgen --port 8000 --bodies bodies.jsonl --concurrency 64 --duration 20
    python -m bench.loadgen --port 8000 --bodies bodies.jsonl --rate 80 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Record:
    started: float = 0.0
    latencies: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    items: int = 0


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.last_head = b""  # the last reply's status line and headers (for callers that read a header)

    async def request(self, raw: bytes) -> int:
        """Send one prepared request, read the whole reply; returns its status (0: connection failed)."""
        for attempt in (0, 1):  # one reconnect: the server may close an idle keep-alive connection
            try:
                if self.writer is None:
                    self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
                assert self.reader is not None
                self.writer.write(raw)
                head = self.last_head = await self.reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length, close = 0, False
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"connection" and value.strip().lower() == b"close":
                        close = True
                if length:
                    await self.reader.readexactly(length)
                if close:
                    self.close()
                return status
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                self.close()
                if attempt:
                    return 0
        return 0

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def prepare(bodies: list[bytes], host: str, port: int, path: str, headers: dict[str, str]) -> list[bytes]:
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return [
        (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(b)}\r\n{extra}\r\n"
        ).encode()
        + b
        for b in bodies
    ]


def items_in(body: bytes) -> int:
    doc = json.loads(body)
    return len(doc["texts"]) if "texts" in doc else 1


async def closed_loop(
    requests: list[tuple[bytes, int]], host: str, port: int, concurrency: int, duration: float, warmup: float
) -> Record:
    rec = Record()
    order = itertools.cycle(range(len(requests)))
    t0 = time.perf_counter()
    measure_from, stop_at = t0 + warmup, t0 + warmup + duration
    rec.started = measure_from

    async def worker() -> None:
        conn = Connection(host, port)
        while (now := time.perf_counter()) < stop_at:
            raw, items = requests[next(order)]
            status = await conn.request(raw)
            end = time.perf_counter()
            if now >= measure_from:
                rec.latencies.append(end - now)
                rec.ends.append(end)
                rec.statuses[status] += 1
                rec.items += items if status == 200 else 0
        conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return rec


async def open_loop(
    requests: list[tuple[bytes, int]], host: str, port: int, rate: float, duration: float, warmup: float
) -> Record:
    rec = Record()
    idle: list[Connection] = []
    tasks: set[asyncio.Task] = set()
    t0 = time.perf_counter()
    measure_from = t0 + warmup
    rec.started = measure_from
    total = int((warmup + duration) * rate)

    async def one(raw: bytes, items: int, scheduled: float) -> None:
        conn = idle.pop() if idle else Connection(host, port)
        status = await conn.request(raw)
        end = time.perf_counter()
        idle.append(conn)
        if scheduled >= measure_from:
            rec.latencies.append(end - scheduled)  # from the scheduled time: queueing in the client counts too
            rec.ends.append(end)
            rec.statuses[status] += 1
            rec.items += items if status == 200 else 0

    for k in range(total):
        scheduled = t0 + k / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        raw, items = requests[k % len(requests)]
        task = asyncio.create_task(one(raw, items, scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    for conn in idle:
        conn.close()
    return rec


def summarize(rec: Record, mode: dict, cpu_s: float, wall_s: float) -> dict:
    lat = np.array(rec.latencies) * 1000 if rec.latencies else np.zeros(1)
    elapsed = (max(rec.ends) - rec.started) if rec.ends else 0.0
    ok = rec.statuses.get(200, 0)
    return {
        **mode,
        "requests": len(rec.latencies),
        "statuses": {str(k): v for k, v in sorted(rec.statuses.items())},
        "failed": len(rec.latencies) - ok,
        "seconds": round(elapsed, 3),
        "requests_per_second": round(ok / elapsed, 2) if elapsed else 0.0,
        "items_per_second": round(rec.items / elapsed, 2) if elapsed else 0.0,
        "latency_ms": {p: round(float(np.percentile(lat, q)), 2) for p, q in (("p50", 50), ("p90", 90), ("p99", 99))}
        | {"mean": round(float(lat.mean()), 2), "max": round(float(lat.max()), 2)},
        "client_cpu_seconds": round(cpu_s, 3),
        "client_cpu_share_of_one_core": round(cpu_s / wall_s, 4),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--path", default="/v1/classify")
    p.add_argument("--bodies", required=True, help="JSON lines, one request body per line (used round robin).")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--concurrency", type=int, help="Closed loop: this many connections, each one request at a time.")
    mode.add_argument("--rate", type=float, help="Open loop: requests per second, sent on schedule.")
    p.add_argument("--duration", type=float, default=20.0, help="Measured seconds.")
    p.add_argument("--warmup", type=float, default=2.0, help="Seconds of load before measuring starts.")
    p.add_argument("--header", action="append", default=[], help="Extra header 'Name: value' (repeatable).")
    args = p.parse_args(argv)

    bodies = [line.encode() for line in Path(args.bodies).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not bodies:
        sys.exit(f"error: {args.bodies} has no request bodies. Write one JSON body per line.")
    headers = dict(h.split(":", 1) for h in args.header)
    raws = prepare(bodies, args.host, args.port, args.path, {k.strip(): v.strip() for k, v in headers.items()})
    requests = [(raw, items_in(b)) for raw, b in zip(raws, bodies, strict=True)]
    cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    if args.concurrency:
        rec = asyncio.run(closed_loop(requests, args.host, args.port, args.concurrency, args.duration, args.warmup))
        mode_info: dict = {"mode": "closed", "concurrency": args.concurrency}
    else:
        rec = asyncio.run(open_loop(requests, args.host, args.port, args.rate, args.duration, args.warmup))
        mode_info = {"mode": "open", "rate": args.rate}
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    print(json.dumps(summarize(rec, mode_info, cpu, time.perf_counter() - wall0)))


if __name__ == "__main__":
    main()
