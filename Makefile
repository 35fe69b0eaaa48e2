# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python

.PHONY: demo test install install-dev bench lint

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

install: $(PY)
	$(PY) -m pip install -q -e .

install-dev: $(PY)
	$(PY) -m pip install -q -e '.[dev]'

# Run the whole job on the embedded default (SQLite + outbox) with sample data.
demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" bash sample/demo.sh

# Install the dev extras and run the whole test suite (PostgreSQL half needs
# NEWSLETTER_TEST_DATABASE_URL, e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test).
test: install-dev
	$(PY) -m pytest -q -p no:cacheprovider

# The quality gate: ruff (lint + format) on the repo, mypy on the package, and no
# `type: ignore` without its reason on the line (`# type: ignore[code]  # why`).

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy newsletter
	@if grep -rnE --include='*.py' 'type: ignore(\[[^]]*\])? *$$' newsletter; then \
		echo "each 'type: ignore[code]' above needs its reason on the line: '# type: ignore[code]  # why'"; exit 1; fi

bench: install-dev
	$(PY) benchmarks/import_speed.py
