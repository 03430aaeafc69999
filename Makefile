# `make test` and `make bench` work from a fresh clone: they create .venv, install, build, run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CUDA_HOME ?= $(if $(wildcard /usr/local/cuda/bin/nvcc),/usr/local/cuda,)
export CUDA_HOME
export TORCH_CUDA_ARCH_LIST ?= 8.0;9.0
export MAX_JOBS ?= 2

.PHONY: test bench build venv clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q "torch==2.14.1" numpy pytest expecttest ninja pytest-benchmark matplotlib tqdm
	touch $@

venv: $(VENV)/.installed

build: venv
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .

test: build
	$(PY) -m pytest -q tests

bench: build
	$(PY) -m bench.compare

clean:
	rm -rf build $(VENV) multilabel_cuda/_C*.so *.egg-info
