# tuf-signer: `make run` starts a local signer, `make test` runs everything.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEV_DIR ?= .dev
STAMP := $(VENV)/.installed-stamp
SOFTHSM_MODULE := /usr/lib/softhsm/libsofthsm2.so
# apt-get needs root; use sudo when we are not.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help install system-deps test-deps run test lint format pytest proto clean

help:
	@echo "make run      install everything, create $(DEV_DIR)/ on first run, start the signer"
	@echo "make test     install everything, lint, run the whole test suite"
	@echo "make lint     ruff + mypy"
	@echo "make format   ruff format + autofix"
	@echo "make proto    regenerate service/tuf_signer/v1 from proto/"
	@echo "make clean    remove $(VENV) and $(DEV_DIR)"

install: system-deps $(STAMP)

# Debian packages: SoftHSM2 (the local HSM). Idempotent: installs only what is missing.
system-deps:
	@if [ ! -e $(SOFTHSM_MODULE) ] || ! command -v softhsm2-util >/dev/null; then \
	  echo "installing softhsm2 (Debian)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq softhsm2; \
	fi
	@# A C compiler and Python's headers: pip builds the native payload checks
	@# (policy/_ccanonical.c, _cbins.c); without them the build skips them and `make test` fails.
	@if ! command -v gcc >/dev/null; then \
	  echo "installing gcc (Debian) for the native payload checks"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc; \
	fi
	@if ! $(PYTHON) -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then \
	  echo "installing python3-dev (Debian) for the native payload checks"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-dev; \
	fi
	@# OpenSSL's headers: the native path-to-bin check (policy/_cbins.c) hashes with libcrypto.
	@if [ ! -e /usr/include/openssl/evp.h ]; then \
	  echo "installing libssl-dev (Debian) for the native path-to-bin check"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libssl-dev; \
	fi

# The tests also need a PostgreSQL server (audit store on PostgreSQL): the one on
# 127.0.0.1:5432 if it answers, else a throwaway cluster the tests start from
# Debian's binaries, installed here when missing. And Go: a test decodes hostile
# payloads with Go's own encoding/json, the decoder go-tuf clients use, and the
# transparency-log tests check our Merkle proofs and signed notes with Go's
# golang.org/x/mod/sumdb (tlog, note), an independent implementation.
test-deps:
	@if ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "installing postgresql (Debian) for the PostgreSQL store tests"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; \
	fi
	@if ! command -v go >/dev/null || [ ! -d /usr/share/gocode/src/golang.org/x/mod/sumdb ]; then \
	  echo "installing golang-go and golang-golang-x-mod-dev (Debian) for the Go cross-checks"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go golang-golang-x-mod-dev; \
	fi
	@# tests/deploy: `systemd-analyze verify` and `security --offline` check deploy/systemd
	@# (kubectl, for kustomize, and kubernetes-validate come with the dev extra).
	@if ! command -v systemd-analyze >/dev/null; then \
	  echo "installing systemd (Debian) for systemd-analyze (the deploy/systemd checks)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd; \
	fi

# After system-deps (gcc, Python's and OpenSSL's headers), also under make -j.
$(STAMP): pyproject.toml setup.py service/tuf_signer/policy/_ccanonical.c service/tuf_signer/policy/_cbins.c | system-deps
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "tuf-signer needs Python >= 3.11 (found $$($(PYTHON) --version))"; exit 1; }
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

run: install
	@[ -f $(DEV_DIR)/tuf-signer.toml ] || $(BIN)/tuf-signer dev-init $(DEV_DIR)
	$(BIN)/tuf-signer serve --config $(DEV_DIR)/tuf-signer.toml

test: install lint pytest

lint: install
	$(BIN)/ruff check service tests scripts examples bench
	$(BIN)/ruff format --check service tests scripts examples bench
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix service tests scripts examples bench
	$(BIN)/ruff format service tests scripts examples bench

# TUF_SIGNER_REQUIRE_NATIVE=1: a missing native payload check fails the run
# (tests/policy/test_native_canonical.py, test_native_bins.py) instead of skipping its tests.
pytest: install test-deps
	TUF_SIGNER_REQUIRE_NATIVE=1 $(BIN)/pytest

proto: install
	$(BIN)/python scripts/gen_proto.py

clean:
	rm -rf $(VENV) $(DEV_DIR) .mypy_cache .ruff_cache .pytest_cache
	rm -f service/tuf_signer/policy/_ccanonical*.so service/tuf_signer/policy/_cbins*.so

# Benchmarks (README "Performance"). Each run installs what it needs from Debian
# (Go + grpc-go for bench/loadgen, nghttp2-client, notary) and builds into bench/.build/.
.PHONY: bench bench-quick bench-profile bench-extras

# Full set, several minutes: bench/results/latest.{json,md} and throughput.png.
bench: install bench-extras
	$(BIN)/python -m bench

bench-extras:
	@$(BIN)/python -c 'import matplotlib' 2>/dev/null && [ -x $(BIN)/py-spy ] \
	  || $(BIN)/pip install -q -e '.[dev,bench]'

# About two minutes (70 s on an idle machine), same ratio keys, smaller workloads:
# bench/results/quick.{json,md}.
bench-quick: install
	$(BIN)/python -m bench --quick

# Where the server's CPU goes under W1, W2, W3 and W4 (py-spy): bench/results/profiles/*.txt.
bench-profile: install bench-extras
	$(BIN)/python -m bench.profile
