# The two commands a newcomer runs: `make demo` and `make test`.
# Both create .venv if missing, install the project, start PostgreSQL (embedded unless
# SWF_DATABASE_URL is set) and migrate it.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test test-long test-second lock peers-lock peers-venv bench celery-suite cluster-bench chaos churn pgbouncer migrate db lint type check-tree clean-db chromium help

help:
	@echo "make demo   - install, start Postgres, migrate, run the example workflow"
	@echo "make test   - install, start Postgres, migrate, run the test suite"
	@echo "make test-long - the long fault cycles (terminates, restarts, outages, failover)"
	@echo "make lock   - refresh requirements.lock from pyproject.toml's ranges"
	@echo "make bench  - benchmarks against Redis/RabbitMQ (writes docs/benchmarks.md)"
	@echo "make peers-venv - .venv-peers: Procrastinate and PgQueuer for bench_peers (from its lock)"
	@echo "make celery-suite - Celery's integration tests on swf:// and on Redis"
	@echo "make celery-suite ONLY=swf - the swf side alone (CI)"
	@echo "make cluster-bench - 1, 2, 4 worker hosts in network namespaces (root; docs/benchmarks.md)"
	@echo "make chaos  - a mixed workload under seeded faults; fails on loss (docs/reliability.md)"
	@echo "make churn  - an hour of tasks and runs: table bloat with autovacuum's defaults"

# The exact versions the suite passed with (requirements.lock, hashes checked), then the
# project itself in place, built by the locked setuptools: nothing comes from whatever the
# index serves that day. `pip check` fails when pyproject.toml wants what the lock lacks
# (run `make lock`).
$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	@touch $(STAMP)

# Refreshes requirements.lock from pyproject.toml's ranges (every extra and the build
# group), for every Python the project supports, with each file's hash. uv does the
# resolving; it is pinned here and installed into the virtualenv only by this target.
UV_VERSION := 0.13.8
lock:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet 'uv==$(UV_VERSION)'
	$(BIN)/uv pip compile pyproject.toml --all-extras --group build --universal \
	    --python-version 3.10 --generate-hashes --quiet -o requirements.lock

# The peers bench_peers runs beside us (Procrastinate, PgQueuer) live in a virtualenv of
# their own, never in .venv: its lock pins them with hashes as the main lock does, and
# peers-lock refreshes it from benchmarks/peers-requirements.in with the same uv.
PEERS_VENV  := .venv-peers
PEERS_STAMP := $(PEERS_VENV)/.installed
PEERS_LOCK  := benchmarks/peers-requirements.lock

$(PEERS_STAMP): $(PEERS_LOCK)
	@test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --require-hashes -r $(PEERS_LOCK)
	$(PEERS_VENV)/bin/python -m pip check
	@touch $(PEERS_STAMP)

peers-venv: $(PEERS_STAMP)

peers-lock:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet 'uv==$(UV_VERSION)'
	$(BIN)/uv pip compile benchmarks/peers-requirements.in --universal \
	    --python-version 3.10 --generate-hashes --quiet -o $(PEERS_LOCK)

db: $(STAMP)
	@if [ -z "$$SWF_DATABASE_URL" ]; then $(BIN)/swf-celery db start; \
	 else echo "using SWF_DATABASE_URL"; fi

migrate: db
	$(BIN)/swf-celery migrate

demo: migrate
	$(BIN)/python -m examples.demo.app

# The suite against the default server, then (when SWF_SECOND_DATABASE_URL is set, as
# .ci/run does for the machine's system PostgreSQL) the database-facing tests again. The
# long fault cycles (marked `long`) run in `make test-long`; each run ends with its 15
# slowest tests. The suite mostly waits (on workers, servers, timeouts), so it runs in
# TEST_JOBS pytest-xdist processes, a test file to a process (TEST_JOBS=0: one process).
DURATIONS := --durations=15
TEST_JOBS ?= 3
PARALLEL = $(if $(filter 0,$(TEST_JOBS)),,-n $(TEST_JOBS) --dist loadfile)
test: migrate lint type
	$(BIN)/python -m pytest -m "not long" $(PARALLEL) $(DURATIONS) $(PYTEST_ARGS)
	@if [ -n "$$SWF_SECOND_DATABASE_URL" ]; then $(MAKE) --no-print-directory test-second; fi

test-long: migrate
	$(BIN)/python -m pytest -m long $(DURATIONS) $(PYTEST_ARGS)

# The second server runs every database test that needs no worker subprocess (the SQL,
# the library, in-process workers), plus the security tests whole (roles and TLS end to
# end): the worker-subprocess tests repeat the same SQL and would double the suite's time.
# SECOND_MARKERS="db" runs everything there.
SECOND_MARKERS ?= db and not slow and not long
test-second: $(STAMP)
	SWF_DATABASE_URL="$$SWF_SECOND_DATABASE_URL" $(BIN)/swf-celery migrate
	SWF_DATABASE_URL="$$SWF_SECOND_DATABASE_URL" $(BIN)/python -m pytest -m "$(SECOND_MARKERS)" \
	    --deselect tests/security $(PARALLEL) $(DURATIONS) $(PYTEST_ARGS)
	SWF_DATABASE_URL="$$SWF_SECOND_DATABASE_URL" $(BIN)/python -m pytest -m db tests/security \
	    $(PARALLEL) $(DURATIONS) $(PYTEST_ARGS)

bench: migrate peers-venv
	$(BIN)/python -m benchmarks.run

# Celery's own t/integration (canvas, tasks, inspect) from the installed version's sdist on
# PyPI, against swf:// and against Redis; counts go into docs/benchmarks.md. ONLY=swf runs
# the swf side alone (CI: about 10 minutes). Either fails when a test fails on swf that is
# not in benchmarks/celery_suite.py's KNOWN_FAILURES (those fail on Redis too).
ONLY ?=
celery-suite: migrate
	$(BIN)/python -m benchmarks.celery_suite $(if $(ONLY),--only $(ONLY))

# Worker hosts simulated in network namespaces against a private PostgreSQL on a bridge
# (needs root; removes its namespaces, bridge and processes whatever happens).
CLUSTER_ARGS ?=
cluster-bench: $(STAMP)
	$(BIN)/python -m benchmarks.cluster_bench $(CLUSTER_ARGS)

# A mixed workload on a private PostgreSQL and its own workers under seeded faults (worker
# kills, database restarts and crashes, frozen hosts, idle transactions, stalled listeners);
# prints what was lost and exits 1 on any loss or stranded run. CHAOS_ARGS=--write-docs puts
# the report in docs/reliability.md. `make test-long` runs it for three minutes.
CHAOS_MINUTES ?= 3
CHAOS_SEED ?= 1
CHAOS_ARGS ?=
chaos: $(STAMP)
	$(BIN)/python -m benchmarks.chaos --minutes $(CHAOS_MINUTES) --seed $(CHAOS_SEED) $(CHAOS_ARGS)

# An hour of tasks and workflow runs, autovacuum at its defaults: table sizes and dead rows
# over time (docs/benchmarks.md, docs/img/churn.png). CHURN_MINUTES=5 for a short look.
CHURN_MINUTES ?= 60
churn: migrate
	BENCH_CHURN_MINUTES=$(CHURN_MINUTES) $(BIN)/python -m benchmarks.run bench_churn

# transport/ and sql/ are installed inside swf_celery (pyproject's package-dir): the
# import-linter and mypy read the package as installed, from a tree of hard links.
CHECK_TREE := build/check

check-tree:
	@rm -rf $(CHECK_TREE) && mkdir -p $(CHECK_TREE)
	@cp -al swf_celery $(CHECK_TREE)/swf_celery
	@cp -al transport $(CHECK_TREE)/swf_celery/transport
	@cp -al sql $(CHECK_TREE)/swf_celery/sql
	@find $(CHECK_TREE) -name __pycache__ -prune -exec rm -rf {} +

lint: $(STAMP) check-tree
	$(BIN)/ruff check swf_celery transport tests examples benchmarks
	cd $(CHECK_TREE) && $(abspath $(BIN))/lint-imports $(CURDIR)/pyproject.toml

type: $(STAMP) check-tree
	cd $(CHECK_TREE) && $(abspath $(BIN))/mypy --config-file $(CURDIR)/pyproject.toml -p swf_celery

# The console's browser tests drive Debian's chromium (Playwright cannot download browsers
# here); without it they skip. Installs it with apt-get when missing (needs root).
chromium:
	@if [ -x /usr/bin/chromium ]; then echo "chromium present"; \
	 elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	   apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	 else echo "no /usr/bin/chromium: browser tests will skip (apt-get install chromium)"; fi

# PgBouncer for its tests and `make cluster-bench CLUSTER_ARGS=--pgbouncer` (Debian's
# package, installed with apt-get when missing; needs root). Without it those tests skip.
pgbouncer:
	@if command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ]; then echo "pgbouncer present"; \
	 elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	   apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends pgbouncer \
	   && (systemctl disable --now pgbouncer 2>/dev/null || service pgbouncer stop 2>/dev/null || true); \
	 else echo "no pgbouncer: its tests will skip (apt-get install pgbouncer)"; fi

clean-db:
	-$(BIN)/swf-celery db remove
	rm -rf .swf
