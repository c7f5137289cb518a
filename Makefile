# nsn: set-up, demo, tests, benchmarks and batch runs. Data targets depend on files, so
# `make mnist` only redoes what is stale.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
NSN    := $(BIN)/nsn
OUT    := out
STAMP  := $(VENV)/.installed-test
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: install demo test test-fast bench bench-quality bench-inpaint bench-scale judge lint clean mnist faces figures score

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
	$(BIN)/python bench/bench_creation.py

## judge: FID and KID of the score judge under noise, blur, dimming, occlusion, salt-and-pepper, grain and class dropping (bench/results/judge.json)
judge: $(BENCH_STAMP)
	$(BIN)/python bench/judge_table.py

bench-quality: $(BENCH_STAMP)
	$(BIN)/python bench/bench_quality.py

## bench-inpaint: hole PSNR of nsn against exemplar fill, biharmonic, OpenCV and the mean image, digits and faces (bench/results/inpaint.json)
bench-inpaint: $(BENCH_STAMP)
	$(BIN)/python bench/bench_inpaint.py

## bench-scale: default train on 1x, 4x, 16x synthetic digits under --memory 352M, locally and on 2 Dask workers, and locally at the paper's 60,000 (bench/results/scale.json)
bench-scale: $(BENCH_STAMP) $(OUT)/scale/digits-1x.h5 $(OUT)/scale/digits-4x.h5 $(OUT)/scale/digits-16x.h5 $(OUT)/scale/digits-15x.h5
	$(BIN)/python bench/bench_scale.py

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
	$(NSN) train $< -o $@ --force

$(OUT)/faces-samples.png: $(OUT)/faces-model.h5
	$(NSN) sample -m $< -n 36 -o $@ --force -q

faces: $(OUT)/faces-samples.png

# ---------------------------------------------------------------- scaling data (bench-scale; not committed)
$(OUT)/scale/digits-%x.h5: bench/make_synthetic.py bench/common.py data/mnist-4k-images-idx3-ubyte.gz data/mnist-4k-labels-idx1-ubyte.gz | $(BENCH_STAMP) $(OUT)
	$(BIN)/python bench/make_synthetic.py --scale $* $@

# ---------------------------------------------------------------- figures (docs/figures)
FIG := docs/figures

$(OUT)/brick.h5: data/brick.png | $(STAMP) $(OUT)
	$(NSN) prep $< --size 28 --crops 3000 -o $@ --force -q

$(OUT)/brick-model.h5: $(OUT)/brick.h5
	$(NSN) train $< --arch mnist --filters 64,64,32 -o $@ --force -q

$(OUT)/inpaint-inputs: data/mnist-4k-images-idx3-ubyte.gz | $(STAMP) $(OUT)
	$(BIN)/python bench/inpaint_inputs.py $< $@

figures: $(OUT)/mnist-model.h5 $(OUT)/brick-model.h5 $(OUT)/faces-model.h5 $(OUT)/inpaint-inputs
	mkdir -p $(FIG)
	$(NSN) sample -m $(OUT)/faces-model.h5 -n 36 -o $(FIG)/faces.png --force -q
	for k in 1 2 3; do $(NSN) sample -m $(OUT)/mnist-model.h5 --layer $$k --prior counts -n 64 -o $(FIG)/layer$$k.png --force -q; done
	for p in normal counts pca mix knn; do $(NSN) sample -m $(OUT)/mnist-model.h5 --prior $$p -n 64 -o $(FIG)/prior-$$p.png --force -q; done
	$(NSN) sample -m $(OUT)/mnist-model.h5 --interpolate 0:1 --steps 10 -o $(FIG)/interpolate.png --force
	$(NSN) sample -m $(OUT)/mnist-model.h5 --arithmetic 0+1-2 -n 6 -o $(FIG)/arithmetic.png --force
	$(NSN) style data/astronaut.png -m $(OUT)/brick-model.h5 --variants 2 -o $(OUT)/style.png --force
	$(BIN)/python -c "from PIL import Image; im = Image.open('$(OUT)/style.png'); im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS).save('$(FIG)/style-brick.png')"
	$(NSN) inpaint $(OUT)/inpaint-inputs/digits --mask $(OUT)/inpaint-inputs/mask.png -m $(OUT)/mnist-model.h5 -o $(OUT)/inpainted --force
	$(BIN)/python bench/inpaint_inputs.py --panel $(OUT)/inpaint-inputs $(OUT)/inpainted $(FIG)/inpaint.png

# ---------------------------------------------------------------- score (nsn against a simple peer)
$(OUT)/gaussian-samples.npz: $(OUT)/mnist.h5
	$(BIN)/python bench/gaussian_baseline.py $< $@ 2000

score: $(OUT)/mnist-model.h5 $(OUT)/gaussian-samples.npz
	$(NSN) score $(OUT)/mnist-model.h5 $(OUT)/gaussian-samples.npz --ref $(OUT)/mnist.h5 -n 2000 --json $(OUT)/scores.json
