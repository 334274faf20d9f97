# Every set-up step a fresh machine needs: `make demo` and `make test` are the README's two commands.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

# torch first, pinned to the wheels on local disk; then the package with its dev extra.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The main job on the SynthFaces reference model; the first run builds the model (~45 min on 2
# CPU cores, once, resumable) and says so. `ldu train recipes/adaptive_tiny.yaml`: a minute.
demo: $(STAMP)
	$(VENV)/bin/ldu train recipes/adaptive_synthfaces.yaml

test: $(STAMP)
	$(VENV)/bin/ruff check continual_ldu tests bench
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/protect_throughput.py

clean:
	rm -rf runs .pytest_cache
