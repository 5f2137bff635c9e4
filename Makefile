# Two commands on a fresh machine:  make demo  (install, then adapt on the embedded benchmark)  and  make test.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned first: 2.13.0 is the CPU build here and the official wheel elsewhere; the package's own
# range (torch>=2.4) then installs nothing more.
TORCH ?= torch==2.13.0

.PHONY: demo test lint install bench clean kernels-static gpu-check

$(VENV)/.installed: pyproject.toml setup.py CMakeLists.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev,export,trt-check]"
# TensorRT 10 type stubs for mypy; --no-deps: their requirement, the tensorrt wheel, needs a GPU driver
	$(PY) -m pip install --quiet --no-deps tensorrt-stubs==10.13.0.35.1
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m udaseg.train --out runs/demo

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	TRITON_INTERPRET=1 $(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_synthetic.py

# Static GPU check of the Triton kernels (no GPU): every kept config x dtype x sm_80/90/100 -> benchmarks/results.
kernels-static: $(VENV)/.installed
	$(PY) benchmarks/kernels_static.py

# On a GPU machine without internet: WHEELS=folder make gpu-check (installs offline, tests, benchmarks, trains).
gpu-check:
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) build *.egg-info
