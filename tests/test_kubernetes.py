"""deploy/kubernetes: what the manifests promise, checked against the service itself (the schemas are checked by
`kubernetes-validate` in make lint; no cluster runs here)."""

from __future__ import annotations

from pathlib import Path

import yaml

from service.config import Settings

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = {p.stem: yaml.safe_load(p.read_text()) for p in (ROOT / "deploy" / "kubernetes").glob("*.yaml")}


def container() -> dict:
    return MANIFESTS["deployment"]["spec"]["template"]["spec"]["containers"][0]


def env() -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container()["env"]}


def test_probes_hit_the_services_health_routes():
    from service.main import create_app

    routes = {getattr(r, "path", "") for r in create_app().routes}
    c = container()
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and "/readyz" in routes
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz" and "/healthz" in routes
    assert c["ports"][0]["containerPort"] == Settings().port


def test_the_pod_is_given_time_to_drain_before_it_is_killed():
    spec = MANIFESTS["deployment"]["spec"]["template"]["spec"]
    command = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    needed = pre_stop + float(env()["ERNIE_CLS_DRAIN_GRACE_S"]) + float(env()["ERNIE_CLS_DRAIN_TIMEOUT_S"])
    assert spec["terminationGracePeriodSeconds"] > needed
    # readiness notices the drain within its grace: the balancer stops sending before the listener closes
    probe = container()["readinessProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] < float(env()["ERNIE_CLS_DRAIN_GRACE_S"])


def test_cpu_limit_matches_instances_times_threads():
    cpus = int(env()["ERNIE_CLS_WORKERS"]) * int(env()["ERNIE_CLS_THREADS"])
    resources = container()["resources"]
    assert float(resources["limits"]["cpu"]) == cpus and float(resources["requests"]["cpu"]) == cpus


def test_the_autoscaler_uses_a_metric_the_service_exports_with_cpu_as_fallback(int8_artifact):
    from service.main import create_app
    from tests.test_service_api import call, settings_for

    metrics = MANIFESTS["hpa"]["spec"]["metrics"]
    queue = next(m for m in metrics if m["type"] == "Pods")["pods"]["metric"]["name"]

    async def scrape(client):
        return (await client.get("/metrics")).text

    exported = call(create_app(settings_for(int8_artifact)), scrape)
    assert any(line.startswith(f"{queue}{{") for line in exported.splitlines()), queue  # one series per version
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in metrics)
    assert MANIFESTS["pdb"]["spec"]["minAvailable"] >= 1
    assert MANIFESTS["hpa"]["spec"]["minReplicas"] > MANIFESTS["pdb"]["spec"]["minAvailable"]


def test_triton_runs_the_images_repository_on_a_gpu_with_its_engine_cache_on_a_volume():
    from release.triton import TRT_CACHE

    spec = MANIFESTS["triton-deployment"]["spec"]["template"]["spec"]
    (triton,) = spec["containers"]
    assert "--model-repository=/models" in triton["args"] and "--model-config-name=gpu" in triton["args"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY exported/waimai-sentiment/triton /models" in dockerfile  # the path the args name
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == "1"
    for probe, path in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")):
        assert triton[probe]["httpGet"]["path"] == path
    mounts = {m["mountPath"] for m in triton["volumeMounts"]}
    assert any(TRT_CACHE.startswith(m + "/") for m in mounts)  # the TensorRT engine cache survives restarts
    exit_timeout = next(int(a.split("=")[1]) for a in triton["args"] if a.startswith("--exit-timeout-secs="))
    assert spec["terminationGracePeriodSeconds"] > exit_timeout
    ports = {p["name"] for p in MANIFESTS["triton-service"]["spec"]["ports"]}
    assert ports == {p["name"] for p in triton["ports"]}
