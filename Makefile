# Every target installs what it needs from this repository's own files.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench bench-history clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,import-test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m artifact_ledger.facade.demo

test: $(STAMP)
	HYPOTHESIS_PROFILE=ci $(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_facade.py

bench-history: $(STAMP)
	$(BIN)/python benchmarks/bench_history.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
