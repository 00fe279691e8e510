# Every target installs what it needs from this repository's own files.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench bench-history bench-projections clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,testing,import-test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m artifact_ledger.facade.demo

test: $(STAMP)
	HYPOTHESIS_PROFILE=ci $(BIN)/python -m pytest -q

# mypy cannot follow setuptools' editable finder and the checkout's directory
# name is arbitrary, so it checks a staged tree of symlinks named like the package.
TYPECHECK := .typecheck
lint: $(STAMP)
	rm -rf $(TYPECHECK)
	mkdir -p $(TYPECHECK)/artifact_ledger
	for f in __init__.py __main__.py sync.py testing.py py.typed ledger projections store facade; do \
		ln -s ../../$$f $(TYPECHECK)/artifact_ledger/$$f; \
	done
	cd $(TYPECHECK) && ../$(BIN)/mypy --config-file ../pyproject.toml -p artifact_ledger
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_facade.py

bench-history: $(STAMP)
	$(BIN)/python benchmarks/bench_history.py

bench-projections: $(STAMP)
	$(BIN)/python benchmarks/bench_projections.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis $(TYPECHECK)
