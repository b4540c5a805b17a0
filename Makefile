# Two commands set up everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test demo lint bench clean

setup: $(STAMP)

# Rebuilt only when the dependency list changes.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

test: setup
	$(PY) -m pytest -q

demo: setup
	$(VENV)/bin/wsi-tools demo --out demo_out

lint: setup
	$(VENV)/bin/ruff check wsi_tools pipelines tests benchmarks
	$(VENV)/bin/ruff format --check wsi_tools pipelines tests benchmarks
	$(VENV)/bin/mypy

bench: setup
	$(PY) benchmarks/record.py extract -- $(PY) benchmarks/extract.py
	$(PY) benchmarks/record.py batch -- $(PY) benchmarks/batch.py
	$(PY) benchmarks/record.py loader -- $(PY) benchmarks/loader.py
	$(PY) benchmarks/record.py mining -- $(PY) benchmarks/mining.py
	$(PY) benchmarks/record.py predict -- $(PY) benchmarks/predict.py
	$(PY) benchmarks/render.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache
