# Countersign: `make run` to use it, `make test` to check it. Both set up everything they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The Learning Record Store (ralph) that the xAPI tests send to: its own virtualenv, its own pins.
VENV_LRS := .venv-lrs
HOST ?= 127.0.0.1
PORT ?= 5000
WORKERS ?= 2
# Threads per worker: pages go ahead while sign-ins wait for their password check, which runs at
# a low CPU priority (core/low_priority.py); 2 x 16 serves an INSET morning's 16 at once.
THREADS ?= 16
export FLASK_APP := app
# The application's own code, for the security lint (not .venv, tests or benchmarks).
APP_CODE := app.py wsgi.py api approvals audit certificates core demo lti mfa operations people quizzes reminders reports training xapi
PIP_AUDIT_VERSION := 2.10.1

# Debian packages: WeasyPrint's Pango/HarfBuzz, fonts, poppler-utils (PDF checks), Chromium (browser tests).
DEB_PACKAGES := libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz0b libharfbuzz-subset0 shared-mime-info \
	fonts-dejavu-core fonts-liberation2 poppler-utils chromium tzdata

.PHONY: run test check setup deps venv venv-lrs lint format clean bench audit security
# pytest workers (pytest-xdist): one more than the cores, because a quarter of the suite's time is
# spent waiting for servers it starts (gunicorn, the LRS, SMTP, Chromium); each worker has its own
# SQLite copies and PostgreSQL database. A worker that runs out of tests takes some of another's
# (worksteal), so none sits idle while one works through a queue of long tests at the end.
TEST_WORKERS ?= $(shell echo $$(( $$(nproc) + 1 )))
PYTEST_XDIST := -n $(TEST_WORKERS) --dist worksteal

# The web server and, beside it, the worker that delivers the outbox (webhooks, grades, xAPI,
# certificate PDFs, reminders) and does what falls due with time; Ctrl-C stops both.
run: setup
	@echo
	@echo "Countersign is at http://$(HOST):$(PORT)/  (Ctrl-C stops it)"
	@$(BIN)/flask worker & worker=$$!; \
	trap 'kill $$worker 2>/dev/null; wait $$worker 2>/dev/null' EXIT INT TERM; \
	$(BIN)/gunicorn --workers $(WORKERS) --threads $(THREADS) --bind $(HOST):$(PORT) --access-logfile - \
		--logger-class core.access_log.Redacting wsgi:app

test: deps venv venv-lrs
	$(BIN)/flask content check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/bandit -c pyproject.toml -q -ll -r $(APP_CODE)
	$(BIN)/pytest $(PYTEST_XDIST) $(PYTEST_ARGS)

# The fast inner loop: lint, then the unit and database tests on SQLite with a twentieth of the
# generated examples; no browser, crash, integration or other slow tests. `make test` runs them all.
check: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	env -u TEST_DATABASE_URL HYPOTHESIS_PROFILE=check $(BIN)/pytest $(PYTEST_XDIST) -q \
		-m "not slow and not browser and not crash and not integration" $(PYTEST_ARGS)

# Security lint alone: medium and high severity findings fail.
security: venv
	$(BIN)/bandit -c pyproject.toml -q -ll -r $(APP_CODE)

# Known vulnerabilities in the pinned dependencies. Needs the vulnerability service (network), so
# CI does not run it; --strict makes an unreachable service an error rather than a silent pass.
audit: venv
	test -x $(BIN)/pip-audit || $(BIN)/python -m pip install --quiet pip-audit==$(PIP_AUDIT_VERSION)
	$(BIN)/pip-audit --strict -r requirements.txt

# Migrate the database in instance/, publish the content, seed demo people on first run.
setup: deps venv
	$(BIN)/flask setup --demo

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

venv-lrs: $(VENV_LRS)/.installed

$(VENV_LRS)/.installed: requirements-lrs.txt
	test -x $(VENV_LRS)/bin/python || $(PYTHON) -m venv $(VENV_LRS)
	$(VENV_LRS)/bin/python -m pip install --quiet --upgrade pip
	$(VENV_LRS)/bin/python -m pip install --quiet -r requirements-lrs.txt
	touch $@

deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing >/dev/null; \
	fi

# Benchmarks: figures to record in the README, never timed assertions.
bench: deps venv
	@command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
	$(BIN)/python bench/api_status.py
	$(BIN)/python bench/reports.py
	$(BIN)/python bench/certificates.py
	$(BIN)/python bench/audit.py
	$(BIN)/python bench/lti.py
	$(BIN)/python bench/storage.py
	$(BIN)/python bench/inset.py
	$(BIN)/python bench/publish.py

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) $(VENV_LRS) .pytest_cache .ruff_cache .hypothesis
