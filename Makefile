# Signals ETL — every set-up step a fresh machine needs is behind these targets.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: test lint fmt build demo bench bench-pg bench-smoke

## Run the whole test suite (unit, integration, end-to-end) against real services; installs
## what the tests need first (scripts/test-deps.sh).
test:
	./scripts/test-deps.sh
	$(CARGO) test --workspace --all-targets

## Formatting and lints exactly as CI checks them.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

build:
	$(CARGO) build --workspace --release

## The whole pipeline on embedded defaults: demo source, receiver, initial + interval sync, verify.
demo:
	$(CARGO) run --release -p signals -- demo

## Benchmarks (not tests): rows/s, MB/s, peak RSS beside a COPY baseline in the same run.
bench-pg:
	$(CARGO) run --release -p signals-bench -- pg --rows $${ROWS:-1000000}

bench: bench-pg

## A small run of the benchmark, so CI keeps it working (figures from it mean nothing).
bench-smoke:
	ROWS=20000 $(MAKE) bench-pg
