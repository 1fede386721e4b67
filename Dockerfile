# syntax=docker/dockerfile:1
# ernie-cls images. Untested here: the development machines have a Docker client but no engine (README).
#   docker build -t ernie-cls .                      lean serving image: ONNX Runtime, no Paddle (default target)
#   docker build --target serve-paddle -t ernie-cls:paddle .   + Paddle Inference backend (ERNIE_CLS_FORMAT=paddle-*)
#   docker build --target train -t ernie-cls:train .           training image (Paddle CPU + PaddleNLP)
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE} AS base
ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY ernie_cls ernie_cls
COPY training training
COPY service service

FROM base AS train
RUN pip install -c constraints.txt ".[train]"
COPY data data
ENTRYPOINT ["ernie-cls"]
CMD ["train", "--data", "data/waimai_10k.csv", "--base-model", "scratch:nano", "--output", "runs/docker", "--overwrite"]

FROM base AS serve-paddle
RUN pip install -c constraints.txt ".[serve,train]"
ENV ERNIE_CLS_HOST=0.0.0.0 ERNIE_CLS_ARTIFACT=/app/exported/waimai-sentiment
EXPOSE 8000
USER nobody
CMD ["python", "-m", "service"]

FROM base AS serve
RUN pip install -c constraints.txt ".[serve]"
ENV ERNIE_CLS_HOST=0.0.0.0 ERNIE_CLS_ARTIFACT=/app/exported/waimai-sentiment
EXPOSE 8000
USER nobody
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz').status != 200)"
CMD ["python", "-m", "service"]
