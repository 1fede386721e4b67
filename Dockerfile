# syntax=docker/dockerfile:1
# Images for ernie-cls. Untested here: the development machines have no Docker engine (see README).
#   docker build --target train -t ernie-cls:train .
FROM python:3.11-slim AS base
ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY ernie_cls ernie_cls
COPY training training
COPY service service

# Training image: Paddle (CPU) + PaddleNLP. For GPU training build FROM a CUDA image and install paddlepaddle-gpu
# from Paddle's own wheel index (README, "GPU training").
FROM base AS train
RUN pip install -c constraints.txt ".[train]"
COPY data data
ENTRYPOINT ["ernie-cls"]
CMD ["train", "--data", "data/waimai_10k.csv", "--base-model", "scratch:nano", "--output", "runs/docker", "--overwrite"]
