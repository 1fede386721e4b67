"""The reliability suite (`make reliability`): the real service over real loopback HTTP, under faults and load.

LiveService: create_app(settings) served by uvicorn in a thread of this process, so a test can reach into the
engine (gate or break its model instances) while clients talk plain HTTP to it.
`record`: each test reports (cases, failures, figures); the session writes reports/reliability.json and prints
a table. A failed assertion is also a failed row.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from service.config import Settings
from service.http_protocol import protocol_class
from service.main import create_app

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ARTIFACT = ROOT / "exported" / "waimai-sentiment"
RESULTS: dict[str, dict] = {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gate:
    """Wraps a model instance's infer: blocks while closed, counts texts, can raise / hang / return bad rows."""

    def __init__(self, infer) -> None:
        self.infer = infer
        self.open = threading.Event()
        self.open.set()
        self.texts = 0
        self.fault: str | None = None  # "raise" | "hang" | "rows"
        self.fault_times: int | None = None  # how many calls fault (None: all of them)
        self.hang_s = 0.0

    def __call__(self, input_ids, token_type_ids):
        self.open.wait()
        self.texts += input_ids.shape[0]
        fault = self.fault
        if fault and self.fault_times is not None:
            self.fault_times -= 1
            if self.fault_times < 0:
                fault = None
        if fault == "raise":
            raise RuntimeError("injected backend failure")
        if fault == "hang":
            time.sleep(self.hang_s)
        logits = self.infer(input_ids, token_type_ids)
        return logits[:-1] if fault == "rows" else logits


class LiveService:
    def __init__(self, **overrides) -> None:
        self.settings = Settings(**{"artifact": str(DEFAULT_ARTIFACT), "workers": 1, "log_json": False, **overrides})
        self.app = create_app(self.settings)
        self.engine = self.app.state.engine
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        s = self.settings
        http = protocol_class("httptools", s.header_timeout_s, s.write_timeout_s)  # as `python -m service` serves
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_config=None, http=http)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.gates: list[Gate] = []

    def __enter__(self) -> LiveService:
        self.thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        else:
            raise AssertionError(f"service not ready: {self.engine.not_ready_reason}")
        for backend in self.engine.backends:  # partial(engine._infer, backend) looks infer up at call time
            gate = Gate(backend.infer)
            backend.infer = gate
            self.gates.append(gate)
        return self

    def __exit__(self, *exc: object) -> None:
        for gate in self.gates:
            gate.fault = None
            gate.open.set()
        self.server.should_exit = True
        self.thread.join(30)

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.base}/metrics", timeout=5).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def close_gates(self) -> None:
        for gate in self.gates:
            gate.open.clear()

    def open_gates(self) -> None:
        for gate in self.gates:
            gate.open.set()


class Balancer:
    """A load balancer's view of one replica: `routes` is set while /readyz said 200 at the last probe (every
    250 ms, shorter than the drain grace); `run()` probes until `stop_at[0]` (monotonic time)."""

    def __init__(self, base: str, stop_at: list[float]) -> None:
        self.base, self.stop_at = base, stop_at
        self.routes = threading.Event()
        self.routes.set()

    def run(self) -> None:
        while time.monotonic() < self.stop_at[0]:
            try:
                ok = httpx.get(f"{self.base}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                ok = False
            if not ok:
                self.routes.clear()
            time.sleep(0.25)


@pytest.fixture
def record(request):
    """record(cases=..., failures=..., **figures): this test's row in reports/reliability.json."""
    row: dict = {"cases": 0, "failures": 0}
    RESULTS[request.node.name] = row

    def _record(**values) -> None:
        row.update(values)

    yield _record


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and item.name in RESULTS:
        RESULTS[item.name]["passed"] = report.passed
        RESULTS[item.name]["seconds"] = round(report.duration, 1)
        if report.failed:
            RESULTS[item.name]["error"] = str(report.longrepr).splitlines()[-1][:300]


def pytest_sessionfinish(session, exitstatus):
    if not RESULTS:
        return
    out = ROOT / "reports" / "reliability.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"tests": RESULTS, "exit_status": int(exitstatus)}, indent=2, ensure_ascii=False))
    lines = [f"{'test':<58} {'cases':>8} {'failures':>9}  result"]
    for name, row in RESULTS.items():
        verdict = "pass" if row.get("passed") else "FAIL"
        lines.append(f"{name:<58} {row['cases']:>8} {row['failures']:>9}  {verdict}")
    print("\n" + "\n".join(lines) + f"\n\nwrote {out.relative_to(ROOT)}")
