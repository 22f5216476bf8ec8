# Verimail: every contributor and CI run the same commands.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# uv from PATH, or bootstrapped into .tools/ with the machine's Python.
UV ?= $(or $(shell command -v uv 2>/dev/null),$(CURDIR)/.tools/bin/uv)
PYTHON ?= python3
PACKAGES := shared/src services/api/src services/worker/src
PYTEST_ARGS ?=

.PHONY: help install run test lint fmt typecheck pytest migrate api worker chaos clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(CURDIR)/.tools/bin/uv:
	$(PYTHON) -m venv $(CURDIR)/.tools
	$(CURDIR)/.tools/bin/pip install --quiet uv

install: $(UV) ## Install all three packages and the dev tools into .venv (from uv.lock)
	$(UV) sync --frozen --all-packages

run: install ## Start the whole system: embedded PostgreSQL, Redis, SMTP sink, API, one worker
	$(UV) run --frozen verimail-dev run

test: install lint typecheck pytest ## Lint, type-check and run every test

lint: install ## ruff lint and format check
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .

fmt: install ## Format and autofix with ruff
	$(UV) run --frozen ruff format .
	$(UV) run --frozen ruff check --fix .

typecheck: install ## mypy --strict on the three packages
	$(UV) run --frozen mypy $(PACKAGES)

pytest: install ## Run the tests only (PYTEST_ARGS=... to pass options)
	$(UV) run --frozen pytest $(PYTEST_ARGS)

migrate: install ## Apply database migrations to DATABASE_URL
	$(UV) run --frozen verimail-migrate

api: install ## Run the API alone (uses DATABASE_URL, REDIS_URL)
	$(UV) run --frozen verimail-api

worker: install ## Run one worker alone (uses DATABASE_URL, REDIS_URL, SMTP_*)
	$(UV) run --frozen verimail-worker

chaos: install ## Chaos soak: signups while workers, Redis, PostgreSQL and SMTP fail (MODE=outbox|in_transaction)
	$(UV) run --frozen python bench/chaos.py --mode $(or $(MODE),outbox) --duration $(or $(DURATION),90) --rate $(or $(RATE),5)

clean: ## Remove .data/ (embedded databases, queued tasks, kept mail) and caches
	rm -rf .data .pytest_cache .mypy_cache .ruff_cache
