"""Attack families (issue 15): for each guard, the variants that slip past a naive version of it, run from a
process of their own (tests/reliability/attacker.py) while, in this process, a normal client keeps classifying,
an orchestrator probes /healthz on a new connection every 100 ms, and a probe task on the server's event loop
measures how late the loop runs (the worst stall any attack caused).

Targets per family: 0 server errors (5xx other than the documented 503 of an overload) and 0 undocumented
answers to the attack; the normal client's p99 within 1 s with 0 failures (429/503 with Retry-After count as
shed, reported apart, only under the request flood); /healthz always answering within 0.5 s.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.reliability.conftest import ROOT, Balancer, LiveService

SETTINGS = dict(
    max_body_bytes=65_536, body_timeout_s=2.0, header_timeout_s=2.0, write_timeout_s=2.0, cache_size=0, max_wait_ms=2
)
# family: (seconds, what its attack connections may end with); a guard that is missing shows as another outcome:
# a 200 for a prefix past the limit, "open" for a slow client never cut off, a 500 for a parser limit
FAMILIES = {
    "over_limit": (8, {"413", "408"}),
    "parser_limits": (8, {"200", "400", "408", "413", "422", "431"}),
    "expansion": (8, {"grows-truncate 200", "grows-strict 422", "fits 200"}),
    "slowloris": (6, {"408", "closed"}),
    "slow_body": (6, {"408"}),
    "slow_read": (6, {"sent"}),
    "connection_flood": (6, {"closed"}),
    "request_flood": (8, {"200", "429", "503"}),
}
MAX_LOOP_STALL_MS = {"expansion": 100}  # where the stall is the guard's point: normalisation kept off the loop
# Families whose connections the server must have dropped (header, body or write deadline: 2 s) a second before the
# attacker lets go of them: what is left is the observers' own few connections.
DROPPED_BY_THE_SERVER = {"slowloris", "slow_body", "slow_read", "connection_flood"}
NORMAL_TEXTS = ["送餐很快，味道很好，下次还点", "等了两个小时，饭都凉了，差评", "人工客服", "分量太少，不值这个价"]


class Observers:
    """The normal client, the health prober and the event-loop lateness probe, for the length of one attack."""

    def __init__(self, svc: LiveService) -> None:
        self.svc = svc
        self.stop = threading.Event()
        self.normal: list[tuple[float, str]] = []  # (seconds, status or error)
        self.health: list[tuple[float, str]] = []
        self.lateness: list[float] = []
        self.threads = [threading.Thread(target=self._normal_client), threading.Thread(target=self._health_prober)]

    def __enter__(self) -> Observers:
        loop = self.svc.engine.batcher._task.get_loop()
        self.probe = asyncio.run_coroutine_threadsafe(self._loop_probe(loop), loop)
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)
        self.probe.cancel()

    async def _loop_probe(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            before = loop.time()
            await asyncio.sleep(0.01)
            self.lateness.append(loop.time() - before - 0.01)

    def _normal_client(self) -> None:
        with httpx.Client(base_url=self.svc.base, timeout=5) as client:
            i = 0
            while not self.stop.is_set():
                i += 1
                started = time.monotonic()
                try:
                    r = client.post("/v1/classify", json={"text": f"{NORMAL_TEXTS[i % 4]} {i}"})
                    outcome = str(r.status_code)
                except httpx.HTTPError as err:
                    outcome = type(err).__name__
                self.normal.append((time.monotonic() - started, outcome))
                time.sleep(0.02)

    def _health_prober(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:  # a new connection each time, as an orchestrator's probe
                outcome = str(httpx.get(f"{self.svc.base}/healthz", timeout=0.5).status_code)
            except httpx.HTTPError as err:
                outcome = type(err).__name__
            self.health.append((time.monotonic() - started, outcome))
            time.sleep(0.1)

    def summary(self) -> dict:
        def p99(samples: list[tuple[float, str]]) -> float:
            times = sorted(s for s, _ in samples)
            return round(times[min(len(times) - 1, int(0.99 * len(times)))] * 1000, 1) if times else -1.0

        normal_statuses: dict[str, int] = {}
        for _, outcome in self.normal:
            normal_statuses[outcome] = normal_statuses.get(outcome, 0) + 1
        return {
            "normal_requests": len(self.normal),
            "normal_statuses": normal_statuses,
            "normal_p99_ms": p99([s for s in self.normal if s[1] == "200"]),
            "health_probes": len(self.health),
            "health_failures": sum(1 for _, o in self.health if o != "200"),
            "health_max_ms": round(max((s for s, _ in self.health), default=0) * 1000, 1),
            "worst_loop_stall_ms": round(max(self.lateness, default=0) * 1000, 1),
        }


@pytest.mark.parametrize("family", list(FAMILIES))
def test_attack_family(family, record):
    seconds, allowed = FAMILIES[family]
    with LiveService(**SETTINGS) as svc, Observers(svc) as observers:
        time.sleep(0.5)  # the observers' baseline before the attack
        attacker = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.attacker", family, str(svc.port), str(seconds)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(seconds)  # the attacker's imports take about a second: it still holds its connections now
        connections_near_end = len(svc.server.server_state.connections)
        stdout, stderr = attacker.communicate(timeout=60)
        time.sleep(0.5)
        assert attacker.returncode == 0, stderr[-2000:]
        attack = json.loads(stdout.strip().splitlines()[-1])
        alive_after = httpx.get(f"{svc.base}/healthz", timeout=2).status_code
    seen = observers.summary()
    statuses: dict[str, int] = attack["statuses"]
    server_errors = sum(n for s, n in statuses.items() if s.startswith("5") and s != "503")
    unexpected = {s: n for s, n in statuses.items() if s not in allowed}
    shed = {s: n for s, n in seen["normal_statuses"].items() if s in ("429", "503")}
    normal_failures = sum(n for s, n in seen["normal_statuses"].items() if s != "200" and s not in shed)
    if family != "request_flood":  # only a flood past capacity may shed the normal client's requests
        normal_failures += sum(shed.values())
    failures = server_errors + sum(unexpected.values()) + normal_failures + seen["health_failures"]
    record(
        cases=attack["attempts"],
        failures=failures,
        attack_statuses=statuses,
        server_connections_near_the_end=connections_near_end,
        **seen,
        normal_shed=shed,
    )
    assert server_errors == 0 and not unexpected, statuses
    assert normal_failures == 0, seen["normal_statuses"]
    assert seen["health_failures"] == 0 and seen["health_max_ms"] < 500, seen
    assert seen["normal_p99_ms"] < 1000, seen
    assert seen["worst_loop_stall_ms"] < MAX_LOOP_STALL_MS.get(family, 1000), seen
    served = seen["normal_statuses"].get("200", 0)
    assert served >= 0.5 * seen["normal_requests"], seen  # the normal client keeps classifying, flood or not
    assert alive_after == 200
    if family in DROPPED_BY_THE_SERVER:
        assert connections_near_end < 10, f"{connections_near_end} connections still open"


def test_keep_alive_clients_across_a_drain_lose_nothing(record):
    """Clients that keep one connection alive (as bots' HTTP pools do), behind a balancer that probes /readyz every
    250 ms, while SIGTERM arrives: while draining every reply says `Connection: close`, so no client sends into a
    kept-alive socket the server is about to close. Each request is answered; none is sent and then lost.

    The balancer matters: a client that keeps opening connections after readiness failed and up to the instant the
    listener closes can have one reset in the kernel's accept queue (seen once in 1 943 requests without it). That
    is TCP's, not the service's, and it is what the drain grace is for."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.reliability.conftest import DEFAULT_ARTIFACT
    from tests.test_service_process import start_service

    proc, base, _ = start_service(DEFAULT_ARTIFACT, ERNIE_CLS_DRAIN_TIMEOUT_S="10", ERNIE_CLS_DRAIN_GRACE_S="1")
    stop_at = [float("inf")]
    outcomes: dict[str, int] = {}
    closes_while_draining = [0]
    balancer = Balancer(base, stop_at)

    def client(k: int) -> None:
        with httpx.Client(base_url=base, timeout=15) as pooled:  # keep-alive, as a bot's HTTP pool
            i = 0
            while time.monotonic() < stop_at[0]:
                if not balancer.routes.is_set():
                    time.sleep(0.01)
                    continue
                i += 1
                try:
                    r = pooled.post("/v1/classify", json={"text": f"{NORMAL_TEXTS[k % 4]} {i}"})
                    kind = f"answered {r.status_code}"
                    closes_while_draining[0] += r.headers.get("connection") == "close"
                except httpx.ConnectError:
                    kind = "refused (not accepted)"
                    time.sleep(0.02)
                except httpx.HTTPError as err:
                    kind = f"lost ({type(err).__name__})"
                outcomes[kind] = outcomes.get(kind, 0) + 1
                time.sleep(0.005)

    with ThreadPoolExecutor(9) as pool:
        pool.submit(balancer.run)
        for k in range(8):
            pool.submit(client, k)
        time.sleep(2)
        signalled = time.monotonic()
        proc.send_signal(15)
        stop_at[0] = time.monotonic() + 3  # through the grace second and past the listener's close
    code = proc.wait(timeout=20)
    lost = sum(v for k, v in outcomes.items() if k.startswith("lost"))
    record(
        cases=sum(outcomes.values()),
        failures=lost,
        outcomes=outcomes,
        replies_with_connection_close=closes_while_draining[0],
        exit_seconds_after_signal=round(time.monotonic() - signalled, 2),
    )
    assert lost == 0 and not outcomes.get("refused (not accepted)"), outcomes
    assert closes_while_draining[0] > 0 and outcomes.get("answered 200", 0) > 50
    assert code in (0, -15)
