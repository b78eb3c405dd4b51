# Stratum — the two commands a fresh machine needs are `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Two PostgreSQL clusters of this checkout's own (scripts/pg.sh), kept apart: the durable dev
# cluster (`make run`, `make bench`; 127.0.0.1:25432) and the fsync=off test cluster (`make
# test`, `make lint`; 127.0.0.1:25433). STRATUM_PG_PORT=<port> moves the one a target starts.
PG          := scripts/pg.sh
TEST_PG     := STRATUM_PG_CLUSTER=test scripts/pg.sh
DEV_DIR     := .stratum
DB_URL      := $(shell $(PG) url stratum)
DEV_SERVER_URL := $(shell $(PG) server-url)
# Tests clone their databases on this server, named "<prefix><uuid>"; the prefix is derived
# from this checkout's path, so `make test` drops this checkout's leftovers and nobody else's.
STRATUM_TEST_DATABASE_URL ?= $(shell $(TEST_PG) server-url)
STRATUM_TEST_DB_PREFIX    ?= $(shell $(PG) prefix)
TEST_ENV    := STRATUM_TEST_DATABASE_URL=$(STRATUM_TEST_DATABASE_URL) STRATUM_TEST_DB_PREFIX=$(STRATUM_TEST_DB_PREFIX)
TEST_PSQL   := psql -X -q -v ON_ERROR_STOP=1 -d $(STRATUM_TEST_DATABASE_URL)/postgres
CARGO       ?= cargo
DOMAIN_CRATES := stratum-core stratum-crypto stratum-audit stratum-consent stratum-webhooks stratum-tenancy stratum-maintenance

.PHONY: ha-test test-clients clients-openapi clients-deps clients-package db-test-clean db-test-down browser-deps conformance openapi-check deploy-check fmt-check clippy doc help db-up db-down db-test-up run build test test-unit lint fmt schema-check boundary-check bench tools clean

help:
	@echo "make run     build, start PostgreSQL, migrate and serve on http://127.0.0.1:3001"
	@echo "make test    start PostgreSQL and run every test of the workspace against it"
	@echo "make lint    fmt, clippy -D warnings, rustdoc -D warnings, domain boundary check, diesel schema check"
	@echo "make conformance   Schemathesis and Standard Webhooks against the release binary"
	@echo "make bench   benchmarks under bench/ (print figures)"
	@echo "make test-clients  the Rust, TypeScript and Python clients (clients/) against a live server"
	@echo "make ha-test the failover test: Patroni + etcd cluster on loopback, switchover, kill -9, failback under load"
	@echo "make db-up / db-down            this checkout's dev PostgreSQL on 127.0.0.1:25432"
	@echo "make db-test-up / db-test-down  this checkout's test PostgreSQL (fsync=off) on 127.0.0.1:25433"
	@echo "make db-test-clean              drop this checkout's leftover test databases (stratum_t_<checkout hash>_*)"

db-up:
	@$(PG) up stratum

db-test-up:
	@$(TEST_PG) up

db-down:
	@$(PG) down

db-test-down:
	@$(TEST_PG) down

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
	 exec $${CARGO_TARGET_DIR:-target}/release/stratum serve

# Drops the leftovers of interrupted test runs of THIS checkout (its prefix) only.
db-test-clean: db-test-up
	@$(TEST_PSQL) -tAc \
	  "SELECT format('DROP DATABASE IF EXISTS %I WITH (FORCE);', datname) FROM pg_database WHERE datname LIKE '$(subst _,\_,$(STRATUM_TEST_DB_PREFIX))%'" \
	  | $(TEST_PSQL) >/dev/null

# Tests run against the real PostgreSQL started above; each test clones its own database.
test: db-test-clean browser-deps deploy-check openapi-check
	$(CARGO) build -p stratum-server
	# The examples run as tests (examples/tests/run_examples.rs) from their built binaries.
	$(CARGO) build --workspace --examples
	@if command -v cargo-nextest >/dev/null 2>&1; then \
	  $(TEST_ENV) $(CARGO) nextest run --workspace --no-fail-fast; \
	else \
	  $(TEST_ENV) $(CARGO) test --workspace --no-fail-fast; \
	fi
	$(TEST_ENV) $(CARGO) test --workspace --doc

# Headless Chromium and its WebDriver for the console's browser test (tests/e2e/console.rs).
browser-deps:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  sudo=""; [ "$$(id -u)" -ne 0 ] && sudo=sudo; \
	  $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	fi

lint: db-test-up fmt-check clippy doc boundary-check schema-check

fmt-check:
	$(CARGO) fmt --all -- --check

fmt:
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The API documentation builds without a warning (broken links, missing docs, bad examples).
doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --workspace

# No domain crate may depend on infrastructure. A failing `cargo tree` fails the check.
boundary-check:
	@bad=0; for c in $(DOMAIN_CRATES); do \
	  tree=$$($(CARGO) tree -p $$c -e normal --prefix none) \
	    || { echo "boundary check: \`cargo tree -p $$c\` failed" >&2; exit 1; }; \
	  deps=$$(printf '%s\n' "$$tree" | grep -E '^(diesel|diesel-async|reqwest|actix-web|tokio-postgres|deadpool|opentelemetry|opentelemetry_sdk|tracing-opentelemetry) ' | sort -u); \
	  if [ -n "$$deps" ]; then echo "boundary violated: $$c depends on: $$deps"; bad=1; fi; \
	done; \
	for c in stratum-webhooks stratum-consent stratum-audit; do \
	  tree=$$($(CARGO) tree -p $$c -e normal --prefix none) \
	    || { echo "boundary check: \`cargo tree -p $$c\` failed" >&2; exit 1; }; \
	  if printf '%s\n' "$$tree" | grep -q '^stratum-tenancy '; then echo "boundary violated: $$c depends on stratum-tenancy"; bad=1; fi; \
	done; \
	tree=$$($(CARGO) tree -p stratum-api -e normal --prefix none) \
	  || { echo "boundary check: \`cargo tree -p stratum-api\` failed" >&2; exit 1; }; \
	deps=$$(printf '%s\n' "$$tree" | grep -E '^(stratum-postgres|diesel|diesel-async|tokio-postgres|deadpool) ' | sort -u); \
	if [ -n "$$deps" ]; then echo "boundary violated: stratum-api depends on: $$deps"; bad=1; fi; \
	[ $$bad -eq 0 ] && echo "boundary check: domain crates are free of diesel/reqwest/actix/tokio-postgres/opentelemetry; webhooks, consent and audit do not depend on tenancy; the HTTP crate reaches storage only through ports"

# schema.rs must be what diesel generates from the migrations (on a scratch database of this
# checkout's prefix on the test cluster).
SCHEMA_DB := $(STRATUM_TEST_DB_PREFIX)schema_check
schema-check:
	@command -v diesel >/dev/null 2>&1 || { \
	  command -v pg_config >/dev/null 2>&1 || { sudo=""; [ "$$(id -u)" -ne 0 ] && sudo=sudo; \
	    $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libpq-dev; }; \
	  $(CARGO) install diesel_cli --locked --no-default-features --features postgres; }
	@$(TEST_PSQL) -c 'DROP DATABASE IF EXISTS $(SCHEMA_DB) WITH (FORCE)' -c 'CREATE DATABASE $(SCHEMA_DB)'
	@diesel migration run --migration-dir migrations --database-url $(STRATUM_TEST_DATABASE_URL)/$(SCHEMA_DB) >/dev/null
	@diesel print-schema --database-url $(STRATUM_TEST_DATABASE_URL)/$(SCHEMA_DB) | diff -u crates/postgres/src/schema.rs - \
	  && echo "schema check: crates/postgres/src/schema.rs matches the migrations"; \
	  rc=$$?; $(TEST_PSQL) -c 'DROP DATABASE IF EXISTS $(SCHEMA_DB) WITH (FORCE)'; exit $$rc

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

# The client libraries (clients/): generated from the OpenAPI document the server serves
# (copied into each client as openapi.json, never kept in git), built, packaged, and tested
# against a live `stratum serve` (clients/run-tests.sh). A document the clients disagree with
# fails their build or their suites.
CLIENT_DIRS := clients/rust clients/typescript clients/python
# The Rust client is a workspace of its own but builds into this checkout's target directory,
# so that the dependencies it shares with the server are compiled once.
CLIENTS_TARGET := $(abspath $(or $(CARGO_TARGET_DIR),target))
CLIENTS_DIST := $(CLIENTS_TARGET)/clients-dist
clients-openapi:
	$(CARGO) build -p stratum-server
	@for d in $(CLIENT_DIRS); do $${CARGO_TARGET_DIR:-target}/debug/stratum openapi > $$d/openapi.json; done

clients-deps: clients-openapi
	cd clients/typescript && npm ci --no-audit --no-fund && npm run build
	@test -x clients/python/.venv/bin/python || python3 -m venv clients/python/.venv
	clients/python/.venv/bin/pip install -q --disable-pip-version-check -r clients/python/requirements-dev.txt
	clients/python/.venv/bin/python clients/python/generate.py
	clients/python/.venv/bin/pip install -q --disable-pip-version-check --no-deps -e clients/python
	cd clients/rust && CARGO_TARGET_DIR=$(CLIENTS_TARGET) $(CARGO) build --locked --tests

clients-package: clients-deps
	cd clients/rust && CARGO_TARGET_DIR=$(CLIENTS_TARGET) $(CARGO) package --locked --allow-dirty
	cd clients/typescript && mkdir -p $(CLIENTS_DIST) && npm pack --pack-destination $(CLIENTS_DIST)
	clients/python/.venv/bin/python -m build --wheel --outdir $(CLIENTS_DIST) clients/python
	@# The packages install into empty projects and load.
	@rm -rf $(CLIENTS_DIST)/try && mkdir -p $(CLIENTS_DIST)/try
	cd $(CLIENTS_DIST)/try && npm init -y >/dev/null && npm install -q --no-audit --no-fund ../stratum-client-0.1.0.tgz \
	  && node --input-type=module -e 'import { Stratum, Webhook } from "@stratum/client"; new Stratum({ baseUrl: "http://127.0.0.1:1", apiKey: "k" }); new Webhook("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");'
	python3 -m venv $(CLIENTS_DIST)/try/venv && $(CLIENTS_DIST)/try/venv/bin/pip install -q --disable-pip-version-check $(CLIENTS_DIST)/stratum_client-0.1.0-py3-none-any.whl \
	  && $(CLIENTS_DIST)/try/venv/bin/python -c 'import stratum_client; stratum_client.Stratum("http://127.0.0.1:1", "k").close()'

test-clients: db-test-up clients-package
	@CARGO_TARGET_DIR=$(CLIENTS_TARGET) clients/run-tests.sh

# The failover test (scripts/ha/): its own etcd and two Patroni-managed PostgreSQL members
# on 127.0.0.1 ports derived from STRATUM_PG_PORT (STRATUM_HA_PORT_BASE sets them; see
# scripts/ha/run.sh), the release binary, a PATCH
# load, then a switchover, a kill -9 of the primary and a failback; one line per fault.
ha-test: build
	@scripts/ha/run.sh $${CARGO_TARGET_DIR:-target}/release/stratum

# Benchmarks run on the durable dev cluster.
bench: db-up
	@STRATUM_TEST_DATABASE_URL="$(DEV_SERVER_URL)" bench/run.sh

clean:
	$(CARGO) clean
