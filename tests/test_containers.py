"""Docker cannot run here (no engine): check that what Dockerfile and docker-compose.yml reference exists and is
what the tests start (`python -m service`, /readyz, the default artifact)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def dockerfile_stages() -> dict[str, list[str]]:
    """Stage name -> its instructions, continuation lines joined; the first entry is the stage's FROM parent."""
    stages: dict[str, list[str]] = {}
    current = ""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        m = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line, re.I)
        if m:
            current = m.group(2)
            stages[current] = [f"PARENT {m.group(1)}"]
        elif current and line.strip() and not line.startswith("#"):
            stages[current].append(" ".join(line.split()))
    return stages


def lineage(stages: dict[str, list[str]], name: str) -> list[str]:
    """Every instruction a stage inherits, from the base image down."""
    parent = stages[name][0].removeprefix("PARENT ")
    return (lineage(stages, parent) if parent in stages else []) + stages[name][1:]


def installs(lines: list[str]) -> list[str]:
    return [line for line in lines if "pip install" in line]


def test_dockerfile_copies_only_existing_paths_and_serves_the_tested_module():
    stages = dockerfile_stages()
    assert {"base", "train", "train-gpu", "serve", "serve-paddle"} <= set(stages)
    assert list(stages)[-1] == "serve"  # default target: the lean serving image
    for lines in stages.values():
        for line in lines:
            if line.startswith("COPY "):
                for src in line.split()[1:-1]:
                    assert (ROOT / src).exists(), src
    serve = " ".join(lineage(stages, "serve"))
    assert 'CMD ["python", "-m", "service"]' in serve and "/readyz" in serve
    assert (ROOT / "service" / "__main__.py").is_file()


def test_the_serving_image_has_no_paddle_and_ships_the_model_with_a_drain_grace():
    stages = dockerfile_stages()
    serve = lineage(stages, "serve")
    assert installs(serve) == [
        'RUN pip install -c constraints.txt ".[serve]"',
        # the stubs' build/ is removed first: setuptools would package the (newer) empty stubs, not the code
        "RUN rm -rf build ./*.egg-info && pip install --no-deps -c constraints.txt .",
    ]
    assert "COPY exported/waimai-sentiment exported/waimai-sentiment" in serve  # not only compose's bind mount
    env = " ".join(line for line in serve if line.startswith("ENV "))
    assert "ERNIE_CLS_ARTIFACT=/app/exported/waimai-sentiment" in env and "ERNIE_CLS_DRAIN_GRACE_S=3" in env
    assert (ROOT / "exported/waimai-sentiment/manifest.json").is_file()
    paddle_serve = lineage(stages, "serve-paddle")
    assert any("libgomp1" in line for line in paddle_serve)  # paddle's wheel needs OpenMP; the slim image lacks it
    assert any("HEALTHCHECK" in line for line in paddle_serve)
    assert not any(".[train" in line for line in installs(paddle_serve))  # paddle, not the whole training stack


def test_the_gpu_image_gets_the_gpu_wheel_and_never_the_cpu_one():
    stages = dockerfile_stages()
    gpu = installs(lineage(stages, "train-gpu"))
    assert any('"paddlepaddle-gpu==' in line and "--index-url" in line for line in gpu)
    assert not any(re.search(r"paddlepaddle(==|\s|$)", line) or '".[train]"' in line for line in gpu), gpu
    assert any('".[train-core]"' in line for line in gpu)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not any(dep.startswith("paddlepaddle") for dep in extras["train-core"])
    assert any(dep.startswith("paddlepaddle==") for dep in extras["train"])  # train = train-core + the CPU wheel
    assert any("libgomp1" in line for line in lineage(stages, "train"))


def test_dependencies_install_before_the_code_is_copied_and_the_base_image_is_pinned():
    stages = dockerfile_stages()
    for name in ("train", "train-gpu", "serve", "serve-paddle"):
        lines = lineage(stages, name)
        first_code_copy = next(i for i, line in enumerate(lines) if line.startswith("COPY ernie_cls"))
        dependency_installs = [i for i, line in enumerate(lines) if "pip install" in line and "--no-deps" not in line]
        assert dependency_installs and max(dependency_installs) < first_code_copy, name
    base_image = re.search(r"ARG PYTHON_IMAGE=(\S+)", (ROOT / "Dockerfile").read_text())
    assert base_image and re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base_image.group(1))
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert {".git", ".venv", "runs", "reports"} <= set(ignored) and "!exported/waimai-sentiment" in ignored


def test_the_triton_image_serves_the_bundled_repository_with_the_core_for_its_python_models():
    stages = dockerfile_stages()
    triton = lineage(stages, "triton")
    assert 'CMD ["tritonserver", "--model-repository=/models"]' in triton
    assert "COPY exported/waimai-sentiment/triton /models" in triton
    assert (ROOT / "exported/waimai-sentiment/triton/ernie_cls_text/config.pbtxt").is_file()
    # the Python models import ernie_cls (tokenizer, calibration): its core is installed, dependencies first
    assert any("COPY ernie_cls ernie_cls" in line for line in triton)
    first_code_copy = next(i for i, line in enumerate(triton) if line.startswith("COPY ernie_cls"))
    assert any("pip install" in line and "--no-deps" not in line for line in triton[:first_code_copy])
    image = re.search(r"ARG TRITON_IMAGE=(\S+)", (ROOT / "Dockerfile").read_text())
    assert image and re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-py3", image.group(1))


def test_compose_api_mounts_the_default_artifact_read_only_and_checks_readiness():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    api = services["api"]
    assert api["build"]["target"] in dockerfile_stages()
    assert "./exported:/app/exported:ro" in api["volumes"]
    artifact = api["environment"]["ERNIE_CLS_ARTIFACT"].removeprefix("/app/")
    assert (ROOT / artifact / "manifest.json").is_file(), "the default artifact must be committed"
    assert "/readyz" in " ".join(api["healthcheck"]["test"])
    gpu = services["trainer-gpu"]
    assert gpu["build"]["target"] == "train-gpu"
    # one process per GPU (the launch test in tests/test_distributed.py runs the same console script this way)
    assert gpu["entrypoint"][:3] == ["python", "-m", "paddle.distributed.launch"] and gpu["entrypoint"][-1].endswith(
        "/ernie-cls"
    )
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
