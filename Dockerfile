# syntax=docker/dockerfile:1
# ernie-cls images. Untested here: the development machines have a Docker client but no engine (README); the stages'
# install sets and paths are checked by tests/test_containers.py.
#   docker build -t ernie-cls .                                 lean serving image: ONNX Runtime, no Paddle, the
#                                                               bundled model (default target)
#   docker build --target serve-paddle -t ernie-cls:paddle .    + Paddle Inference (serve an artifact with paddle-*
#                                                               formats: mount it, set ERNIE_CLS_ARTIFACT/FORMAT)
#   docker build --target train -t ernie-cls:train .            training image (Paddle CPU + PaddleNLP)
#   docker build --target train-gpu -t ernie-cls:train-gpu .    training on GPUs: paddlepaddle-gpu from Paddle's index
#   docker build --target triton -t ernie-cls:triton .          Triton Inference Server with the bundled model's
#                                                               repository (text in, labels out; docs/triton.md)
# Stop with a grace above ERNIE_CLS_DRAIN_GRACE_S + ERNIE_CLS_DRAIN_TIMEOUT_S (3 + 20 s): `docker stop -t 30`,
# `docker run --stop-timeout 30`; compose sets stop_grace_period.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
FROM ${PYTHON_IMAGE} AS base
ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
# Dependencies are installed before the code is copied, so an edit to the code does not reinstall them: until then
# the packages are empty stubs, and `pip install --no-deps .` after the copy installs the real ones (after
# removing the stubs' build/: setuptools keeps a built file that is newer than its source, and the stubs are).
RUN for pkg in ernie_cls training release service bench commands; do mkdir -p "$pkg" && touch "$pkg/__init__.py"; done

# Paddle's CPU wheel needs the OpenMP runtime, which the slim image lacks.
FROM base AS paddle-base
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/*

FROM paddle-base AS train
RUN pip install -c constraints.txt ".[train]"
COPY ernie_cls ernie_cls
COPY training training
COPY release release
COPY service service
COPY bench bench
COPY commands commands
RUN rm -rf build ./*.egg-info && pip install --no-deps -c constraints.txt .
COPY data data
ENTRYPOINT ["ernie-cls"]
CMD ["train", "--data", "data/waimai_10k.csv", "--base-model", "scratch:nano", "--output", "runs/docker", "--overwrite"]

# The GPU wheel comes from Paddle's own index (PyPI has Paddle GPU wheels only up to 2.6); never the CPU wheel, which
# would own the same `paddle/` package and turn is_compiled_with_cuda() False. Pick the index of your CUDA version.
FROM paddle-base AS train-gpu
ARG PADDLE_GPU_INDEX=https://www.paddlepaddle.org.cn/packages/stable/cu126/
RUN pip install "paddlepaddle-gpu==3.3.1" --index-url "${PADDLE_GPU_INDEX}" --extra-index-url https://pypi.org/simple \
 && pip install -c constraints.txt ".[train-core]"
COPY ernie_cls ernie_cls
COPY training training
COPY release release
COPY service service
COPY bench bench
COPY commands commands
RUN rm -rf build ./*.egg-info && pip install --no-deps -c constraints.txt .
COPY data data
ENTRYPOINT ["ernie-cls"]
CMD ["train", "--data", "data/waimai_10k.csv", "--base-model", "scratch:nano", "--device", "gpu", "--output", "runs/gpu", "--overwrite"]

FROM paddle-base AS serve-paddle
RUN pip install -c constraints.txt ".[serve]" paddlepaddle
COPY ernie_cls ernie_cls
COPY service service
RUN rm -rf build ./*.egg-info && pip install --no-deps -c constraints.txt .
COPY exported/waimai-sentiment exported/waimai-sentiment
ENV ERNIE_CLS_HOST=0.0.0.0 ERNIE_CLS_ARTIFACT=/app/exported/waimai-sentiment \
    ERNIE_CLS_DRAIN_GRACE_S=3 ERNIE_CLS_DRAIN_TIMEOUT_S=20
STOPSIGNAL SIGTERM
EXPOSE 8000
USER 65534:65534
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz').status != 200)"]
CMD ["python", "-m", "service"]

# Triton with the bundled model's repository. Its Python models (tokenizer, postprocess) import ernie-cls's core
# (tokenization, calibration: numpy + tokenizers only). On a GPU: add --model-config-name=gpu (TensorRT, INT8).
# Into the image's own Python (the one the Python backend runs), keeping its numpy: only tokenizers is added.
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:25.01-py3
FROM ${TRITON_IMAGE} AS triton
ENV PIP_BREAK_SYSTEM_PACKAGES=1 PIP_NO_CACHE_DIR=1
WORKDIR /opt/ernie-cls
COPY pyproject.toml constraints.txt README.md ./
RUN grep '^tokenizers==' constraints.txt > tokenizers.txt && pip install -r tokenizers.txt \
 && mkdir -p /cache/tensorrt
COPY ernie_cls ernie_cls
RUN pip install --no-deps .
COPY exported/waimai-sentiment/triton /models
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
  CMD ["curl", "-fsS", "http://127.0.0.1:8000/v2/health/ready"]
CMD ["tritonserver", "--model-repository=/models"]

FROM base AS serve
RUN pip install -c constraints.txt ".[serve]"
COPY ernie_cls ernie_cls
COPY service service
RUN rm -rf build ./*.egg-info && pip install --no-deps -c constraints.txt .
COPY exported/waimai-sentiment exported/waimai-sentiment
ENV ERNIE_CLS_HOST=0.0.0.0 ERNIE_CLS_ARTIFACT=/app/exported/waimai-sentiment \
    ERNIE_CLS_DRAIN_GRACE_S=3 ERNIE_CLS_DRAIN_TIMEOUT_S=20
STOPSIGNAL SIGTERM
EXPOSE 8000
USER 65534:65534
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz').status != 200)"]
CMD ["python", "-m", "service"]
