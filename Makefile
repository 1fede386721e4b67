# Two commands do all set-up on a fresh machine:  `make serve`  and  `make test`.
# Everything is installed into .venv from pyproject.toml, pinned by constraints.txt.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS ?= train,serve,dev

.PHONY: install browser test lint format serve demo bench-train default-model bench-model bench-service bench-ab bench-operations screenshots reliability soak robust-model bench-robustness verify gpu-check second-dataset bench-second baseline lock clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	touch $@

install: $(STAMP)

# Headless Chromium for the /docs and playground browser tests, and a Chinese font so that the playground's
# screenshots show characters, not boxes (Debian packages; sudo when not root).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@{ command -v chromium >/dev/null && [ -d /usr/share/fonts/truetype/wqy ]; } || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium \
		fonts-wqy-microhei >/dev/null; }

test: $(STAMP) browser
	$(BIN)/python -m pytest -q
	$(MAKE) --no-print-directory lint

lint: $(STAMP)
	$(BIN)/ruff check ernie_cls training release service bench commands tests
	$(BIN)/ruff format --check ernie_cls training release service bench commands tests
	$(BIN)/mypy ernie_cls training release service bench commands
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile
	$(BIN)/shellcheck scripts/*.sh bench/*.sh
	$(BIN)/kubernetes-validate --strict --quiet deploy/kubernetes/*.yaml

format: $(STAMP)
	$(BIN)/ruff format ernie_cls training release service bench commands tests
	$(BIN)/ruff check --fix ernie_cls training release service bench commands tests

# Serve the bundled default model (exported/waimai-sentiment) on http://127.0.0.1:8000 (docs at /docs).
serve: $(STAMP)
	ERNIE_CLS_LOG_JSON=false $(BIN)/python -m service

# The recipe of the bundled model and of docs/benchmarks.md. RECIPE is shared so both stay the same.
DATA := --data data/waimai_10k.csv --text-col review --label-col label --label-names 0=negative,1=positive \
	--seed 42 --dev-size 0.05
RECIPE := $(DATA) --base-model scratch:nano --epochs 3 --eval-every 100 --patience 8 --pretrain-epochs 4 --ema-decay 0.99 \
	--max-seq-len 128

# Training benchmark (about 20 minutes on 2 cores): writes runs/bench-nano/metrics.json.
bench-train: $(STAMP)
	$(BIN)/ernie-cls train $(RECIPE) --output runs/bench-nano --overwrite --no-progress

# Rebuild the default model from scratch: train, QAT, export every format to runs/waimai-full, and the compact
# copy that is committed (INT8 ONNX models + Triton + tokenizer, < 25 MB) to exported/waimai-sentiment.
# About 25 minutes on 2 cores.
# The export gate is the default 0.5 pt INT8 drop: QAT learns the FP32 model's own predictions (docs/quantization.md)
# and kept 98.9 % of them on the 2026-11-30 rebuild, but 26 flipped texts make +-0.2 pt of noise, so issue 18's
# 0.2 pt target is checked on the shipped file by tests/test_bundled_model.py rather than gating every rebuild.
EXPORT_ARGS := --checkpoint runs/waimai/best --qat runs/waimai-qat/best --name waimai-sentiment --overwrite
default-model: $(STAMP)
	$(BIN)/ernie-cls train $(RECIPE) --output runs/waimai --overwrite --no-progress
	$(BIN)/ernie-cls qat --checkpoint runs/waimai/best --output runs/waimai-qat --overwrite --no-progress
	$(BIN)/ernie-cls export $(EXPORT_ARGS) --output runs/waimai-full
	$(BIN)/ernie-cls export $(EXPORT_ARGS) --output exported/waimai-sentiment --formats onnx-int8,triton

# The robust model (docs/robustness.md): the plain model of `make default-model` (runs/waimai) fine-tuned one more
# epoch with the noise-consistency loss on the same split, then QAT (which inherits it) and a full export to
# runs/robust-full. About 15 minutes on 2 cores; needs `make default-model` first. --no-ngrams: the n-gram branch is
# fitted on clean text, and docs/robustness.md measured the robust model without it.
ROBUST := --epochs 1 --eval-every 50 --patience 8 --ema-decay 0.99 --noise-consistency 3.0 --noise-rate 0.2 --no-ngrams
robust-model: $(STAMP)
	$(BIN)/ernie-cls train $(DATA) $(ROBUST) --base-model runs/waimai/best --output runs/robust --overwrite --no-progress
	$(BIN)/ernie-cls qat --checkpoint runs/robust/best --output runs/robust-qat --overwrite --no-progress
	$(BIN)/ernie-cls export --checkpoint runs/robust/best --qat runs/robust-qat/best --name waimai-robust \
		--overwrite --output runs/robust-full

# Test accuracy under text noise, plain vs robust, FP32 vs INT8 (needs default-model and robust-model).
bench-robustness: $(STAMP)
	$(BIN)/ernie-cls bench robustness plain=runs/waimai-full robust=runs/robust-full \
		--output reports/bench-robustness.json
	$(BIN)/ernie-cls bench robustness plain=runs/waimai-full robust=runs/robust-full --kinds mixed --rates 0.1 \
		--draws 10 --output reports/bench-robustness-target.json

# The pre-launch checks on the bundled model, on its own held-out split (reports/verify-waimai-sentiment/).
verify: $(STAMP)
	$(BIN)/ernie-cls verify exported/waimai-sentiment --data data/waimai_10k.csv --text-col review --label-col label

# Every format of the full artifact (needs `make default-model` first): docs/benchmarks.md section 3.
bench-model: $(STAMP)
	$(BIN)/ernie-cls bench model runs/waimai-full --threads 2 --output reports/bench-model.json

# The demo of the training CLI: the default recipe in a 3-minute budget, then predictions.
demo: $(STAMP)
	$(BIN)/ernie-cls train --data data/waimai_10k.csv --text-col review --label-col label \
		--label-names 0=negative,1=positive --base-model scratch:nano --time-budget 3 --output runs/demo --overwrite
	printf '送餐很快，味道很好，下次还点\n等了两个小时，饭都凉了，差评\n人工客服\n' | \
		$(BIN)/ernie-cls predict --checkpoint runs/demo/best

# The service under load vs the raw model (about 5 minutes): docs/benchmarks.md section 4.
bench-service: $(STAMP)
	$(BIN)/ernie-cls bench service exported/waimai-sentiment --output reports/bench-service.json

# The service at concurrency 64, the tree at BASE (a commit) vs the working tree, alternating (about 4 minutes at
# ROUNDS=4): how a change to the hot path is judged (docs/benchmarks.md section 5).
BASE ?= HEAD
ROUNDS ?= 4
bench-ab: $(STAMP)
	BASE=$(BASE) ROUNDS=$(ROUNDS) bench/ab_service.sh

# Several models (issue 20's targets, about 3 minutes): a reload and a rollback under c32 load (failed requests, p99
# during the swap, rollback seen in replies) and two models sharing the cores (docs/benchmarks.md section 11).
bench-operations: $(STAMP)
	$(BIN)/python -m bench.operations --output reports/bench-operations.json

# The playground's screenshots in the README (docs/img/playground-*.png): the bundled model in headless Chromium.
screenshots: $(STAMP) browser
	$(BIN)/python -m bench.screenshots --output docs/img

# Reliability under overload, deadlines, disconnects, backend faults, tampering, bad keys and eight attack families
# (about 3 minutes):
# prints a table and writes reports/reliability.json (docs/reliability.md).
reliability: $(STAMP)
	ERNIE_CLS_RELIABILITY=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/reliability -s

# 30 minutes at 70 % of the measured capacity: p99 and RSS per minute (reports/soak.json + .png).
soak: $(STAMP)
	$(BIN)/ernie-cls bench soak exported/waimai-sentiment --minutes 30 --output reports/soak.json

# On a machine with an NVIDIA GPU: the INT8 file through TensorRT vs ONNX Runtime on the test split (installs
# TensorRT into .venv-gpu; cannot run on the development machines).
gpu-check:
	scripts/gpu-check.sh exported/waimai-sentiment data/waimai_10k.csv

# The second dataset for decisions (domain x sentiment, 4 imbalanced classes; bench/second_dataset.py), and the
# README's train command with defaults on it (its metrics.json compares with the TF-IDF baseline): docs/benchmarks.md.
second-dataset: $(STAMP)
	$(BIN)/python -m bench.second_dataset --output runs/data/domain_sentiment.csv
# bench-second: the README command with its defaults (a 20-minute budget) on it: docs/benchmarks.md section 10.
bench-second: second-dataset
	$(BIN)/ernie-cls train --data runs/data/domain_sentiment.csv --text-col review --label-col label --seed 42 \
		--base-model scratch:nano --output runs/second-default --overwrite --no-progress

baseline: $(STAMP)
	$(BIN)/python -m training.baseline --data data/waimai_10k.csv --seed 42

lock:
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^ernie-cls' > constraints.txt.new
	(head -2 constraints.txt; cat constraints.txt.new) > constraints.txt.tmp && rm constraints.txt.new
	mv constraints.txt.tmp constraints.txt

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
