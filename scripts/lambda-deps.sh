#!/usr/bin/env bash
# What `make lambda` needs beyond Rust: cargo-lambda, and zig (which it uses as the linker so the
# binaries run on Amazon Linux 2023's glibc whatever this machine has). Both from PyPI.
set -euo pipefail
if ! command -v cargo-lambda >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check cargo-lambda
fi
if ! python3 -c "import ziglang" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check ziglang
fi
