.DEFAULT_GOAL := all
sources = $(wildcard okra_sidecar clients/python tests bench chaos fuzz protos deploy requirements)

VENV = .venv
BIN = $(VENV)/bin
# Touched after each install; pip runs again only when the lock or pyproject.toml is newer.
STAMP = $(VENV)/.install-stamp
# Every package of the development and CI install, pinned with hashes (`make lock` refreshes it).
LOCK = requirements/dev.txt
# The Python client's own distribution, which the sidecar depends on; installed editable.
CLIENT = clients/python

.PHONY: all venv install lock test-latest lint-only test-only proto proto-check proto-lint proto-release stubs errors-doc format lint typecheck test test-both test-unit run bench chaos hostile fuzz clean

all: lint test

$(BIN)/python:
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml $(CLIENT)/pyproject.toml $(LOCK) | $(BIN)/python
	$(BIN)/python -m pip install --require-hashes --no-deps -r $(LOCK)
	$(BIN)/python -m pip install --no-deps --no-build-isolation -e $(CLIENT) -e .
	touch $@

venv install: $(STAMP)

# Resolves pyproject.toml's ranges (the client's included, and the build backend) to today's
# releases, with hashes. The client itself resolves from its folder (requirements/client.in) and
# is left out of the lock: pip takes no editable install in hash-checking mode, so `install`
# adds it.
lock:
	python3 -m venv $(VENV)-tools
	$(VENV)-tools/bin/python -m pip install -q pip-tools
	$(VENV)-tools/bin/pip-compile -q --extra dev --generate-hashes --allow-unsafe --strip-extras \
	  --no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
	  -o $(LOCK) requirements/client.in pyproject.toml requirements/build.in
	$(VENV)-tools/bin/python requirements/drop_editable.py $(LOCK)

# What a refresh of the lock would break: the linters and the tests on the newest releases
# that pyproject.toml allows, in a virtualenv of their own. Not part of CI.
test-latest:
	rm -rf $(VENV)-latest
	python3 -m venv $(VENV)-latest
	$(VENV)-latest/bin/python -m pip install -q --upgrade -e $(CLIENT) -e '.[dev]'
	$(MAKE) --no-print-directory VENV=$(VENV)-latest STAMP=$(VENV)-latest/.latest lint-only test-only

proto: install
	$(BIN)/python protos/generate.py

proto-check: install
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(BIN)/python protos/generate.py "$$tmp" && \
	diff -r -x __pycache__ "$$tmp" $(CLIENT)/okra_client/gen && echo "$(CLIENT)/okra_client/gen is up to date"

# The last released descriptor set; `make proto-release VERSION=x.y.z` adds the next one.
PROTO_RELEASED = $(shell ls protos/released/v*.json | sort -V | tail -n 1)

proto-lint: install
	$(BIN)/buf lint
	$(BIN)/buf format --diff --exit-code
	$(BIN)/buf breaking --against $(PROTO_RELEASED)
	@echo "protos lint clean and compatible with $(PROTO_RELEASED)"

proto-release: install
	@test -n "$(VERSION)" || { echo "usage: make proto-release VERSION=x.y.z"; exit 2; }
	$(BIN)/buf build --exclude-source-info -o protos/released/v$(VERSION).json
	$(BIN)/python -c "import json, sys; p = sys.argv[1]; \
	d = json.load(open(p)); open(p, 'w').write(json.dumps(d, indent=1) + '\n')" \
	protos/released/v$(VERSION).json

# Go, Java and TypeScript stubs per buf.gen.yaml; needs the plugins it names (docs/clients.md).
stubs: install
	$(BIN)/buf generate

# docs/errors.md's reason tables from okra_sidecar/errors.py.
errors-doc: install
	$(BIN)/python -m tests.docs.errors_table

format: install
	$(BIN)/ruff check --fix $(sources)
	$(BIN)/ruff format $(sources)

lint: install proto-check proto-lint lint-only

lint-only:
	$(BIN)/ruff check $(sources)
	$(BIN)/ruff format --check $(sources)
	$(BIN)/mypy $(sources)

typecheck: install
	$(BIN)/mypy $(sources)

test: install test-only

# Every test that takes a Redis runs on a single primary and on a local 3-master Redis
# Cluster (docs/testing.md); `make test-both ARGS=tests/api` for a part.
test-only:
	$(BIN)/pytest --stores both

test-both: install
	$(BIN)/pytest --stores both $(ARGS)

test-unit: install
	$(BIN)/pytest -m 'not slow'

run: install
	$(BIN)/okra-sidecar serve --workflows examples/workflows --admin-listen 127.0.0.1:9464

# `make bench ARGS=--quick`: ARGS go to `python -m bench` (`make bench ARGS=--help` lists them).
# The fault suite: `make chaos ARGS="--duration 600 --rate 20"` for the long profile.
chaos: install
	$(BIN)/python -m chaos $(ARGS)

bench: install
	$(BIN)/python -m bench $(ARGS)

# W2 beside the hostile-definitions set, as a ratio to W2 alone; fails under 80%.
hostile: install
	$(BIN)/python -m bench.hostile $(ARGS)

# The fuzzer's long profile (10,000 requests); the test suite runs the short one (2,000).
fuzz: install
	$(BIN)/python -m fuzz --count 10000

clean:
	rm -rf build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache .coverage
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
