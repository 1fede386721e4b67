"""Docker cannot run here (no engine): check that what Dockerfile and docker-compose.yml reference exists and is
what the tests start (`python -m service`, /readyz, the default artifact)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def dockerfile_stages() -> dict[str, list[str]]:
    stages: dict[str, list[str]] = {}
    current = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        m = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.I)
        if m:
            current = m.group(1)
            stages[current] = []
        elif current and line.strip() and not line.startswith("#"):
            stages[current].append(line.strip())
    return stages


def test_dockerfile_copies_only_existing_paths_and_serves_the_tested_module():
    stages = dockerfile_stages()
    assert {"base", "train", "serve", "serve-paddle"} <= set(stages)
    assert list(stages)[-1] == "serve"  # default target: the lean serving image
    for lines in stages.values():
        for line in lines:
            if line.startswith("COPY "):
                for src in line.split()[1:-1]:
                    assert (ROOT / src).exists(), src
    serve = " ".join(stages["serve"])
    installs = [line for line in stages["serve"] if "pip install" in line]
    assert installs == ['RUN pip install -c constraints.txt ".[serve]"']  # no paddle in the serving image
    assert 'CMD ["python", "-m", "service"]' in serve and "/readyz" in serve
    assert (ROOT / "service" / "__main__.py").is_file()


def test_compose_api_mounts_the_default_artifact_read_only_and_checks_readiness():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    api = services["api"]
    assert api["build"]["target"] in dockerfile_stages()
    assert "./exported:/app/exported:ro" in api["volumes"]
    artifact = api["environment"]["ERNIE_CLS_ARTIFACT"].removeprefix("/app/")
    assert (ROOT / artifact / "manifest.json").is_file(), "the default artifact must be committed"
    assert "/readyz" in " ".join(api["healthcheck"]["test"])
    for name in ("trainer", "trainer-gpu"):
        svc = services[name]
        assert svc["build"]["target"] in dockerfile_stages()
        for volume in svc["volumes"]:
            assert (ROOT / volume.split(":")[0]).exists() or volume.startswith("./runs")
    assert services["trainer"]["profiles"] == ["trainer"] and services["trainer-gpu"]["profiles"] == ["gpu"]


def test_readyz_is_a_route_of_the_app():
    from service.main import create_app

    paths = {getattr(r, "path", "") for r in create_app().routes}
    assert {"/readyz", "/healthz", "/v1/classify", "/metrics", "/docs"} <= paths
