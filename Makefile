# Stratum — the two commands a fresh machine needs are `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PG          := scripts/pg.sh
DEV_DIR     := .stratum
DB_URL      := $(shell $(PG) url stratum)
CARGO       ?= cargo
DOMAIN_CRATES := stratum-core stratum-crypto stratum-audit stratum-consent stratum-webhooks stratum-tenancy stratum-maintenance

.PHONY: browser-deps conformance openapi-check deploy-check fmt-check clippy help db-up db-down db-test-up run build test test-unit lint fmt schema-check boundary-check bench tools clean

help:
	@echo "make run     build, start PostgreSQL, migrate and serve on http://127.0.0.1:3001"
	@echo "make test    start PostgreSQL and run every test of the workspace against it"
	@echo "make lint    fmt, clippy -D warnings, domain boundary check, diesel schema check"
	@echo "make conformance   Schemathesis and Standard Webhooks against the release binary"
	@echo "make bench   benchmarks under bench/ (print figures)"
	@echo "make db-up / db-down   the project's own PostgreSQL on 127.0.0.1:55432"

db-up:
	@$(PG) up stratum

db-test-up:
	@STRATUM_PG_FAST=1 $(PG) up stratum

db-down:
	@$(PG) down

# Development secrets, generated once and kept out of git.
$(DEV_DIR)/dev.env:
	@mkdir -p $(DEV_DIR) && chmod 700 $(DEV_DIR)
	@{ echo "STRATUM_ENCRYPTION_KEY=$$(head -c 48 /dev/urandom | base64 | tr -d '\n/+=' | cut -c1-48)"; \
	   echo "STRATUM_ADMIN_API_KEY=sk_dev_$$(head -c 48 /dev/urandom | base64 | tr -d '\n/+=' | cut -c1-43)"; } > $@
	@chmod 600 $@
	@echo "generated development keys in $@"

build:
	$(CARGO) build --release -p stratum-server

run: db-up build $(DEV_DIR)/dev.env
	@set -a; . $(DEV_DIR)/dev.env; set +a; \
	 export DATABASE_URL="$(DB_URL)" STRATUM_WEBHOOK_ALLOW_PRIVATE_TARGETS=true STRATUM_BIND=$${STRATUM_BIND:-127.0.0.1:3001}; \
	 echo; echo "Stratum on http://$$STRATUM_BIND  (admin key: $$STRATUM_ADMIN_API_KEY)"; \
	 echo "  curl -s http://$$STRATUM_BIND/health"; \
	 echo "  curl -s -H 'X-API-Key: $$STRATUM_ADMIN_API_KEY' -H 'Content-Type: application/json' \\"; \
	 echo "       -d '{\"name\":\"Acme\",\"slug\":\"acme\"}' http://$$STRATUM_BIND/api/v1/tenants"; \
	 echo "  curl -s -H 'X-API-Key: $$STRATUM_ADMIN_API_KEY' http://$$STRATUM_BIND/api/v1/audit-logs"; echo; \
	 exec ./target/release/stratum serve

# Tests run against the real PostgreSQL started above; each test clones its own database.
test: db-test-up browser-deps deploy-check openapi-check
	@psql -h 127.0.0.1 -p 55432 -U postgres -d postgres -tAc \
	  "SELECT 'DROP DATABASE IF EXISTS ' || datname || ' WITH (FORCE);' FROM pg_database WHERE datname LIKE 'stratum\_t\_%'" \
	  | psql -q -h 127.0.0.1 -p 55432 -U postgres -d postgres >/dev/null
	$(CARGO) build -p stratum-server
	# The examples run as tests (examples/tests/run_examples.rs) from their built binaries.
	$(CARGO) build --workspace --examples
	@if command -v cargo-nextest >/dev/null 2>&1; then \
	  $(CARGO) nextest run --workspace --no-fail-fast; \
	else \
	  $(CARGO) test --workspace --no-fail-fast; \
	fi
	$(CARGO) test --workspace --doc

# Headless Chromium and its WebDriver for the console's browser test (tests/e2e/console.rs).
browser-deps:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  sudo=""; [ "$$(id -u)" -ne 0 ] && sudo=sudo; \
	  $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	fi

lint: db-test-up fmt-check clippy boundary-check schema-check

fmt-check:
	$(CARGO) fmt --all -- --check

fmt:
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# No domain crate may depend on infrastructure.
boundary-check:
	@bad=0; for c in $(DOMAIN_CRATES); do \
	  deps=$$($(CARGO) tree -p $$c -e normal --prefix none 2>/dev/null | grep -E '^(diesel|diesel-async|reqwest|actix-web|tokio-postgres|deadpool) ' | sort -u); \
	  if [ -n "$$deps" ]; then echo "boundary violated: $$c depends on: $$deps"; bad=1; fi; \
	done; [ $$bad -eq 0 ] && echo "boundary check: domain crates are free of diesel/reqwest/actix/tokio-postgres"

# schema.rs must be what diesel generates from the migrations.
schema-check:
	@command -v diesel >/dev/null 2>&1 || { \
	  command -v pg_config >/dev/null 2>&1 || { sudo=""; [ "$$(id -u)" -ne 0 ] && sudo=sudo; \
	    $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libpq-dev; }; \
	  $(CARGO) install diesel_cli --locked --no-default-features --features postgres; }
	@psql -q -h 127.0.0.1 -p 55432 -U postgres -d postgres -c 'DROP DATABASE IF EXISTS stratum_schema_check WITH (FORCE)' -c 'CREATE DATABASE stratum_schema_check'
	@diesel migration run --migration-dir migrations --database-url $$($(PG) url stratum_schema_check) >/dev/null
	@diesel print-schema --database-url $$($(PG) url stratum_schema_check) | diff -u crates/postgres/src/schema.rs - \
	  && echo "schema check: crates/postgres/src/schema.rs matches the migrations"

# Python tools for the checks (installed from PyPI into .venv on first use).
VENV := .venv
PY_TOOLS := kubernetes-validate check-jsonschema pyyaml openapi-spec-validator
$(VENV)/.tools: Makefile
	@test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	@$(VENV)/bin/pip install -q --disable-pip-version-check $(PY_TOOLS)
	@touch $@

deploy-check: $(VENV)/.tools
	@$(VENV)/bin/python deploy/check.py

# The OpenAPI document (`stratum openapi`) must pass an independent validator.
openapi-check: $(VENV)/.tools
	@mkdir -p target
	@$(CARGO) run -q -p stratum-server --bin stratum -- openapi > target/openapi.json
	@$(VENV)/bin/python -m openapi_spec_validator target/openapi.json

# Clients nobody here wrote, against the release binary in a loopback-only network
# namespace: Schemathesis over the served OpenAPI document, and real deliveries verified
# with the official Standard Webhooks library. Fails on any failure.
CONFORMANCE_TOOLS := schemathesis==4.32.5 standardwebhooks==1.1.0
$(VENV)/.conformance-tools: Makefile
	@test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	@$(VENV)/bin/pip install -q --disable-pip-version-check $(CONFORMANCE_TOOLS)
	@touch $@

conformance: db-test-up build $(VENV)/.conformance-tools
	@scripts/conformance/run.sh

bench: db-up
	@bench/run.sh

clean:
	$(CARGO) clean
