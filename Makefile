# Two commands on a fresh machine:  make demo  (install, then adapt on the embedded benchmark)  and  make test.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned first: 2.13.0 is the CPU build here and the official wheel elsewhere; the package's own
# range (torch>=2.4) then installs nothing more.
TORCH ?= torch==2.13.0

.PHONY: demo test lint install bench clean

$(VENV)/.installed: pyproject.toml setup.py CMakeLists.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev,export]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m udaseg.train --out runs/demo

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

test: lint
	TRITON_INTERPRET=1 $(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_synthetic.py

clean:
	rm -rf $(VENV) build *.egg-info
