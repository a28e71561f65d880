# Two commands do all setup on a fresh machine:
#   make demo   builds a bundled example spec and prints its parameter inventory
#   make test   runs ruff, the schema check and the test suite
# Both create .venv and install what they need. torch is pinned to the CPU wheel first
# so that pip never pulls a multi-GB CUDA build; the package itself asks for torch>=2.4.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
TORCH  ?= torch==2.13.0

.PHONY: demo test install lint schemas bench clean

$(BIN)/modelspec: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: $(BIN)/modelspec

demo: install
	$(BIN)/modelspec build specs/d2l/shared.yaml -o build/d2l-shared
	@echo
	$(BIN)/modelspec report build/d2l-shared
	@echo "open build/d2l-shared/report.html in a browser for the diagram and the sortable table"

test: install
	$(BIN)/ruff check modelspec tests benchmarks
	$(BIN)/modelspec schema --check schemas
	$(BIN)/python -m pytest

schemas: install
	$(BIN)/modelspec schema -o schemas

bench: install
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/zoo.py

clean:
	rm -rf build .pytest_cache .ruff_cache
