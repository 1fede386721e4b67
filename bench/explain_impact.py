"""Does /explain slow classify down? The real service (one instance, cache off): two closed-loop classify clients
for `--seconds`, with and without one explain client sending 256-character texts back to back (honouring
Retry-After), alternated over `--rounds` -> classify replies and p99 per run (docs/benchmarks.md section 11).

    python -m bench.explain_impact --artifact exported/waimai-sentiment
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.request


def _post(port: int, path: str, body: dict) -> tuple[int, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    reply = conn.getresponse()
    reply.read()
    conn.close()
    return reply.status, dict(reply.getheaders())


def _run(port: int, seconds: float, with_explain: bool) -> dict:
    stop, latencies, explained = time.monotonic() + seconds, [], [0]

    def classify() -> None:
        rng = random.Random()
        while time.monotonic() < stop:
            started = time.monotonic()
            if _post(port, "/v1/classify", {"text": "送餐很快味道不错" + str(rng.random())})[0] == 200:
                latencies.append(time.monotonic() - started)

    def explain() -> None:
        while time.monotonic() < stop:
            status, headers = _post(port, "/v1/explain", {"text": "送餐很快味道不错" * 32})
            explained[0] += status == 200
            if status != 200:
                time.sleep(float(headers.get("Retry-After", "1")))

    threads = [threading.Thread(target=classify) for _ in range(2)] + [threading.Thread(target=explain)] * with_explain
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)] * 1000 if latencies else 0.0
    return {"explain_client": with_explain, "classify_200": len(latencies), "classify_p99_ms": round(p99, 1),
            "explanations": explained[0]}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", default="exported/waimai-sentiment")
    parser.add_argument("--port", type=int, default=8768)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    env = {**os.environ, "ERNIE_CLS_ARTIFACT": args.artifact, "ERNIE_CLS_PORT": str(args.port),
           "ERNIE_CLS_WORKERS": "1", "ERNIE_CLS_CACHE_SIZE": "0", "ERNIE_CLS_LOG_REQUESTS": "false"}  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "service"], env=env, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{args.port}/readyz", timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        for k in range(args.rounds):
            for with_explain in (False, True) if k % 2 == 0 else (True, False):
                print(json.dumps({"round": k, **_run(args.port, args.seconds, with_explain)}), flush=True)
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
