#!/usr/bin/env bash
# Runs the whole test suite: lint and the type checker, then pytest against the local store and Azurite (started by the
# suite itself on free loopback ports), then the suites of the record format, the stores and the
# HTTP API once more on the pure-Python code (VAULT_PURE_PYTHON: what runs where the compiled
# extension is not built, as on the Function App). Extra arguments go to pytest, and then only the
# first run is made.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh dev
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
if [ $# -gt 0 ]; then
    exec .venv/bin/python -m pytest "$@"
fi
.venv/bin/python -m pytest
echo "--- again on the pure-Python record path (VAULT_PURE_PYTHON=1)"
VAULT_PURE_PYTHON=1 exec .venv/bin/python -m pytest -q tests/test_conformance.py tests/test_format_doc.py \
    tests/test_http.py tests/test_seek.py tests/test_cli.py tests/test_faults.py
