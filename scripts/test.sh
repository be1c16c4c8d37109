#!/usr/bin/env bash
# Runs the whole test suite: lint, then pytest against the local store and Azurite (started by the
# suite itself on free loopback ports). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh dev
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest "$@"
