# The two commands: `make run` (the whole stack, foreground) and `make test` (the suite).
# Each sets up what it needs: the virtualenv, the project, Redis and Mosquitto.

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
VAR_DIR ?= var
STAMP := $(VENV)/.installed

.PHONY: run test test-faults test-stack test-multihost lint bench bench-scale format status stop system-packages-run system-packages-test system-packages-test-postgres clean help

help:
	@echo "make run     set up and run the whole stack in the foreground (Ctrl-C stops it)"
	@echo "make test    set up and run the test suite against real Redis, Mosquitto and Celery"
	@echo "             (DB=postgres: on a throwaway PostgreSQL server of its own)"
	@echo "make test-stack   the whole stack as make run starts it: first message, SIGTERM, health script"
	@echo "make test-faults  the fault suite: crashes and outages under load (about 5 min)"
	@echo "make test-multihost  three hosts as network namespaces, one killed mid-stream (root, ~70 s)"
	@echo "make lint    ruff (lint + format check), mypy and the layer contract (lint-imports)"
	@echo "make bench   end-to-end throughput and latency on the make-run stack (~3 min; QUICK=1: ~1 min)"
	@echo "make bench-scale  1,000 WebSockets, 10,000 MQTT devices and a 5-minute soak (~10 min)"
	@echo "make status  the state of each service of a running stack"
	@echo "make stop    stop a running stack (in reverse start order)"

$(PY):
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed"' \
		|| { echo "Python 3.11 or newer is needed (found $(PYTHON)); set PYTHON=/path/to/python3.11"; exit 1; }
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
		echo "python venv is missing; installing python3-venv"; \
		apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null && $(PYTHON) -m venv $(VENV); }

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,postgres]'
	@touch $@

# The system packages of one purpose: `run` (the stack) or `test` (run's, Prometheus, chromium).
system-packages-run system-packages-test system-packages-test-postgres: system-packages-%:
	@scripts/install_system_packages.sh $*

run: $(STAMP) system-packages-run
	@$(PY) scripts/init_env.py .env
	@exec $(PY) manage.py runstack

# DB=postgres: the same suite on a throwaway PostgreSQL server of its own (tests/postgres.py).
DB ?= sqlite
TEST_PACKAGES := system-packages-$(if $(filter postgres,$(DB)),test-postgres,test)

test: $(STAMP) $(TEST_PACKAGES)
	TEST_DATABASE=$(DB) $(PY) -m pytest -m "not faults and not multihost and not stack" $(PYTEST_ARGS)

# The whole stack as `make run` starts it (tests marked `stack`): the README's first message and a
# clean SIGTERM, the health script and Prometheus against it. Minutes of start-ups, so apart.
test-stack: $(STAMP) $(TEST_PACKAGES)
	TEST_DATABASE=$(DB) $(PY) -m pytest -m stack $(PYTEST_ARGS)

# Kills, restarts and outages under load, each held to one effect per message (tests/faults/).
test-faults: $(STAMP) $(TEST_PACKAGES)
	TEST_DATABASE=$(DB) $(PY) -m pytest -m faults $(PYTEST_ARGS)

# Three hosts as network namespaces (root): infra (PostgreSQL, Redis, Mosquitto) and two that each
# run a subscriber and every queue's workers; one is SIGKILLed mid-stream (tests/multihost/). It
# brings its own PostgreSQL whatever DB says, so it runs once, not per database.
test-multihost: $(STAMP) system-packages-test-postgres
	$(PY) -m pytest -m multihost -s $(PYTEST_ARGS)

# QUICK=1: the same steps with fewer messages and samples (under 2 minutes instead of 10).
bench: $(STAMP) system-packages-run
	$(PY) -m bench.run_bench $(if $(filter-out 0,$(QUICK)),--quick) $(BENCH_ARGS)

# Scale: 1,000 NOC WebSockets on one Daphne, 10,000 MQTT devices, a 5-minute soak (bench/scale.py).
bench-scale: $(STAMP) system-packages-run
	$(PY) -m bench.scale $(SCALE_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	@# The django-stubs plugin loads the settings: type-check with development settings.
	ENV_FILE= DJANGO_DEBUG=true $(VENV)/bin/mypy
	@# Imports run downward only (docs/architecture.md, "Layers"), with no cycles.
	$(VENV)/bin/lint-imports --no-logo

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

status: $(STAMP)
	@$(PY) manage.py stackctl status || true

stop: $(STAMP)
	@$(PY) manage.py stackctl shutdown

clean:
	rm -rf $(VENV) $(VAR_DIR) .mypy_cache .ruff_cache .pytest_cache .import_linter_cache
