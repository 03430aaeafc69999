# `make test` and `make bench` work from a fresh clone: they create .venv, install, build, run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CUDA_HOME ?= $(if $(wildcard /usr/local/cuda/bin/nvcc),/usr/local/cuda,)
export CUDA_HOME
export MAX_JOBS ?= 2

.PHONY: test bench build venv clean cpp-test cpp-test-large isa-test gpu-check

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q "torch==2.14.1" numpy pytest expecttest ninja pytest-benchmark matplotlib tqdm
	touch $@

venv: $(VENV)/.installed

# Rebuild (pip's editable build starts from scratch: minutes with the CUDA sources) only when a
# source or build file changed since the last build.
BUILD_INPUTS := setup.py pyproject.toml $(shell find csrc -type f)
$(VENV)/.built: $(VENV)/.installed $(BUILD_INPUTS)
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

build: $(VENV)/.built

test: build
	$(PY) -m pytest -q tests
	$(MAKE) cpp-test
	$(MAKE) isa-test

# The CPU tests again for each other vector ISA this CPU runs (e.g. AVX2 and the portable path on an
# AVX512 machine), each built CPU-only into build-isa/: see tests/cpu_isa_variants.py.
isa-test: build
	$(PY) tests/cpu_isa_variants.py

# C++ tests through CTest: the SIMT-emulated CUDA kernels (tests/cpp: plain, ThreadSanitizer and
# AddressSanitizer builds, and the deliberately broken variants the sanitizers must catch), and the
# library built against libtorch as a C++ user links it (CPU kernels; ops, backward, double backward).
CPP_BUILD := build-cmake/tests
cpp-test: venv
	cmake -S . -B $(CPP_BUILD) -DCMAKE_BUILD_TYPE=Release -DMLC_CUDA=OFF \
	  -DPython3_EXECUTABLE=$(abspath $(PY)) \
	  -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')" > /dev/null
	cmake --build $(CPP_BUILD) -j $(MAX_JOBS)
	cd $(CPP_BUILD) && ctest --output-on-failure -j $(MAX_JOBS)

# The emulation tests beyond 2^31 elements (opt-in: 4 GiB of memory, minutes; see tests/cpp/README.md),
# in their own build directory.
cpp-test-large:
	cmake -S . -B $(CPP_BUILD)-large -DMLC_BUILD_LIBRARY=OFF -DMLC_EMU_SANITIZERS=OFF \
	  -DMLC_EMU_LARGE_TESTS=ON -DCMAKE_BUILD_TYPE=Release > /dev/null
	cmake --build $(CPP_BUILD)-large -j $(MAX_JOBS) --target large_bce_emu large_bce_emu_offset32
	cd $(CPP_BUILD)-large && ctest --output-on-failure -L large

# Extra options for the benchmark CLI, e.g. `make bench BENCH_ARGS=--quick` (see bench/README.md).
BENCH_ARGS ?=
bench: build
	$(PY) -m bench.compare $(BENCH_ARGS)

# On a machine with a CUDA device: build, the CUDA tests (pytest -m cuda) and the benchmark on the
# device (bench/results/cuda.json and cuda.png). Without a device it says so and succeeds.
gpu-check: venv
	@if ! $(PY) -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then \
	  echo "gpu-check: no CUDA device on this machine, nothing to check"; exit 0; fi; \
	$(MAKE) build MAX_JOBS=$$(nproc) && \
	$(PY) -m pytest -q -m cuda tests && \
	$(PY) -m bench.compare --device cuda --json bench/results/cuda.json --plot bench/results/cuda.png

clean:
	rm -rf build build-cmake build-isa $(VENV) multilabel_cuda/_C*.so *.egg-info
