# nsn: set-up, demo, tests, benchmarks and batch runs. Data targets depend on files, so
# `make mnist` only redoes what is stale.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
NSN    := $(BIN)/nsn
OUT    := out
STAMP  := $(VENV)/.installed-test
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: install demo test test-fast bench bench-quality lint clean mnist faces texture figures

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	touch $@

install: $(STAMP)

## demo: prep the bundled digits, train a 3-layer NSN, sample a grid (out/demo-samples.png)
demo: $(STAMP) mnist
	$(NSN) info $(OUT)/mnist-model.h5
	@echo "samples: $(OUT)/mnist-samples.png"

## test: the whole suite, slow end-to-end tests included (what CI runs)
test: $(STAMP)
	$(BIN)/python -m pytest -q

## test-fast: skip the slow end-to-end tests
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(BENCH_STAMP)
	$(BIN)/python bench/bench_train.py
	$(BIN)/python bench/bench_generate.py

bench-quality: $(BENCH_STAMP)
	$(BIN)/python bench/bench_quality.py

lint: $(STAMP)
	$(BIN)/ruff check nsn_cli tests bench

clean:
	rm -rf $(OUT) bench/results .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# ---------------------------------------------------------------- batch runs
$(OUT):
	mkdir -p $@

$(OUT)/mnist.h5: data/mnist-4k-images-idx3-ubyte.gz | $(STAMP) $(OUT)
	$(NSN) prep $< -o $@ --force -q

$(OUT)/mnist-model.h5: $(OUT)/mnist.h5
	$(NSN) train $< -o $@ --force

$(OUT)/mnist-samples.png: $(OUT)/mnist-model.h5
	$(NSN) sample -m $< -n 100 -o $@ --force -q

mnist: $(OUT)/mnist-samples.png

$(OUT)/faces.h5: $(wildcard data/lfw25-faces/*.png) | $(STAMP) $(OUT)
	$(NSN) prep data/lfw25-faces --size 28 --zca -o $@ --force -q

$(OUT)/faces-model.h5: $(OUT)/faces.h5
	$(NSN) train $< --arch mnist --filters 64,64,32 -o $@ --force

$(OUT)/faces-samples.png: $(OUT)/faces-model.h5
	$(NSN) sample -m $< -n 36 -o $@ --force -q

faces: $(OUT)/faces-samples.png
