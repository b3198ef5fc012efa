#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain and the services the machine runs
# (PostgreSQL): moto's server, which stands in for AWS Secrets Manager. Safe to run repeatedly.
set -euo pipefail
if ! python3 -c "import moto.server, boto3" 2>/dev/null; then
  echo "installing moto[server] from PyPI for the AWS tests" >&2
  python3 -m pip install --quiet --disable-pip-version-check 'moto[server]'
fi
if ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
  echo "warning: nothing listens on 127.0.0.1:5432; the PostgreSQL tests will fail (set SIGNALS_TEST_PG_URL)" >&2
fi
