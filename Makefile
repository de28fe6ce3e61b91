# Entry points: `make serve`, `make demo` and `make test`. Each creates .venv when it is missing.
# torch==2.13.0 is installed first (TORCH may add pip options, e.g. "--index-url https://download.pytorch.org/whl/cpu"
# for the CPU build on a machine whose pip would otherwise take PyPI's CUDA build).
# Bring your own torch: `make demo TORCH=` skips the torch install (use VENV_FLAGS=--system-site-packages
# to see a system-wide torch from the venv).
PYTHON ?= python3
VENV ?= .venv
VENV_FLAGS ?=
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo serve test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	@if [ -n "$(TORCH)" ] && ! $(BIN)/python -c "import torch" 2>/dev/null; then \
		$(BIN)/pip install --quiet $(TORCH); fi

$(BIN)/latentfm: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e ".[test,diffusers,hub,ui]"
	touch $(BIN)/latentfm

demo: $(BIN)/latentfm
	$(BIN)/latentfm demo --out out/demo

serve: $(BIN)/latentfm
	$(BIN)/latentfm serve --model fashion-mnist --model digits

test: $(BIN)/latentfm
	$(BIN)/python -m pytest tests

lint: $(BIN)/latentfm
	$(BIN)/ruff check latentfm tests benchmarks

clean:
	rm -rf out runs .pytest_cache
