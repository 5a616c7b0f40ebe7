# diffjax: `make demo` trains/samples the embedded default, `make test` runs the whole suite.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: setup demo test lint sample figures docs bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[experiments,test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments.train --config experiments/configs/checkerboard_fm.py --workdir outputs/demo

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -n 2 -q --durations=15 tests

# 64 MNIST digits from the pretrained flow model shipped with the package (no training, no data)
sample: $(STAMP)
	$(PY) -m experiments.sample --workdir pretrained:mnist_fm --sampler midpoint --steps 10 --num 64 \
		--out outputs/pretrained/mnist_fm_midpoint10

lint: $(STAMP)
	$(PY) -m ruff check .

# every figure of the theory, redrawn by the library, into outputs/figures (MNIST panels need trained models)
figures: $(STAMP)
	$(PY) -m experiments.figures.make_all --out outputs/figures

# the documentation site into outputs/site (README → guide pages, docstrings → API reference)
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

# peer benchmarks in their own venv: CPU torch (pinned), diffusers, flow_matching
BENCH_VENV  ?= .venv-bench
TORCH_INDEX ?=  # e.g. https://download.pytorch.org/whl/cpu where torch must be downloaded
$(BENCH_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) -e '.[experiments,bench]'
	touch $@

bench: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python bench/bench_samplers.py
	$(BENCH_VENV)/bin/python bench/bench_unet.py

clean:
	rm -rf $(VENV) outputs workdirs
