# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python

.PHONY: demo test install install-dev bench lint

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# The demo needs no editable install: a plain one builds without warnings (tests/test_packaging.py).
install: $(PY)
	$(PY) -m pip install -q .

# Editable, for development. -qq hides setuptools' notice that every editable install of this
# layout prints ("be careful with folders ... named as your package"); errors still show, and
# tests/test_packaging.py fails on any warning the build itself gives.
install-dev: $(PY)
	$(PY) -m pip install -qq -e '.[dev]'

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
