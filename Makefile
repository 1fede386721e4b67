# Two commands do all set-up on a fresh machine:  `make serve`  and  `make test`.
# Everything is installed into .venv from pyproject.toml, pinned by constraints.txt.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS ?= train,serve,dev

.PHONY: install test lint format serve demo train-default bench-train baseline lock clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	touch $@

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q
	$(MAKE) --no-print-directory lint

lint: $(STAMP)
	$(BIN)/ruff check ernie_cls training service tests
	$(BIN)/ruff format --check ernie_cls training service tests
	$(BIN)/mypy service ernie_cls

format: $(STAMP)
	$(BIN)/ruff format ernie_cls training service tests
	$(BIN)/ruff check --fix ernie_cls training service tests

# Until the REST service lands (issue #4), `make serve` runs the training demo: a short scratch:nano fine-tune on
# the bundled waimai_10k reviews, then predictions for a few messages.
serve: demo

demo: $(STAMP)
	@echo "== ernie-cls demo: the REST service is not built yet; training a quick model instead (about 3 minutes) =="
	$(BIN)/ernie-cls train --data data/waimai_10k.csv --text-col review --label-col label \
		--label-names 0=negative,1=positive --base-model scratch:nano --epochs 1 --output runs/demo --overwrite
	printf '送餐很快，味道很好，下次还点\n等了两个小时，饭都凉了，差评\n人工客服\n' | \
		$(BIN)/ernie-cls predict --checkpoint runs/demo/best

# The benchmark of docs/benchmarks.md (about 20 minutes on 2 cores).
bench-train: $(STAMP)
	$(BIN)/ernie-cls train --data data/waimai_10k.csv --text-col review --label-col label \
		--label-names 0=negative,1=positive --base-model scratch:nano --epochs 8 --seed 42 \
		--output runs/bench-nano --overwrite --no-progress

baseline: $(STAMP)
	$(BIN)/python -m training.baseline --data data/waimai_10k.csv --seed 42

lock:
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^ernie-cls' > constraints.txt.new
	(head -2 constraints.txt; cat constraints.txt.new) > constraints.txt.tmp && rm constraints.txt.new
	mv constraints.txt.tmp constraints.txt

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
