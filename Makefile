# One task runner for CI, the README and developers.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PIP_DISABLE_PIP_VERSION_CHECK := 1
DEMO := demo-data
# the demo's store; its vault key is a throwaway file beside it (never in the repo)
ML = MEDLAKE_VAULT_KEY_FILE=$(DEMO)/vault.key $(BIN)/medlake --store duckdb:$(DEMO)/medlake.duckdb

.PHONY: venv install install-test system-deps demo test test-fast bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e .

install-test: $(BIN)/python system-deps
	$(BIN)/pip install -q -e '.[test]'

# PostgreSQL server binaries and Java 17 for the engine tests, Chromium for the browser tests, from Debian,
# where missing.
system-deps:
	@bash .ci/system-deps.sh

demo: install
	rm -rf $(DEMO)
	$(BIN)/medlake simulate --patients 1000 --hospitals 3 --seed 42 --out $(DEMO)/hospital
	$(ML) init
	$(ML) vocab load --demo
	$(ML) ingest $(DEMO)/hospital --sources $(DEMO)/hospital/sources.toml
	$(ML) identity new-key --key-file $(DEMO)/vault.key
	$(ML) empi run
	$(ML) transform
	$(ML) map gaps --coverage
	$(ML) map suggest --limit 10
	$(ML) map auto-accept --min-score 0.9
	$(ML) transform
	$(ML) map gaps --coverage
	$(ML) status
	$(ML) quality run --out $(DEMO)/quality

test: install-test
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: install-test
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not postgres and not spark and not slow and not browser"

bench: install-test
	$(BIN)/python bench/vocab_load.py

clean:
	rm -rf $(VENV) $(DEMO) medlake-data .pytest_cache
