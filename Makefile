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
# PENDING: files written before the gate existed and still being edited by others; the lead
# runs `ruff format .` once everyone has stopped, fixes what is left, and empties these
# three lists. New files are never added here: write them clean.
LINT_PENDING := \
    newsletter/articles.py newsletter/cli.py newsletter/config.py tests/test_articles.py tests/web_support.py
FORMAT_PENDING := \
    benchmarks/import_speed.py benchmarks/send_throughput.py benchmarks/subscribe_timing.py \
    migrations/versions/0002_editors.py benchmarks/web_requests.py newsletter/articles.py newsletter/cli.py \
    newsletter/config.py newsletter/db.py newsletter/message.py newsletter/render.py newsletter/selfservice.py \
    newsletter/subscribers.py newsletter/web.py tests/conftest.py tests/test_articles.py tests/test_config.py \
    tests/test_db.py tests/test_web.py tests/test_web_browser.py tests/test_web_cli.py tests/test_web_subscribe.py \
    tests/web_support.py
TYPES_PENDING := \
    newsletter/cli.py newsletter/config.py \
    newsletter/subscribers.py
TYPED := $(filter-out $(TYPES_PENDING),$(shell find newsletter -name '*.py'))

lint: install-dev
	$(BIN)/ruff check $(addprefix --extend-exclude ,$(LINT_PENDING)) .
	$(BIN)/ruff format --check $(addprefix --extend-exclude ,$(FORMAT_PENDING)) .
	$(BIN)/mypy $(if $(TYPES_PENDING),--follow-imports=silent) $(TYPED)
	@if grep -nE 'type: ignore(\[[^]]*\])? *$$' $(TYPED); then \
		echo "each 'type: ignore[code]' above needs its reason on the line: '# type: ignore[code]  # why'"; exit 1; fi

bench: install-dev
	$(PY) benchmarks/import_speed.py
