#!/usr/bin/env bash
# Writes requirements.txt, what the Function App deploys with: vault_core's dependencies and the
# Functions SDKs with everything they pull in, at exact versions, resolved in a clean virtual
# environment on the app's Python (3.13, found by scripts/python313.sh). Run it after changing
# the dependencies in pyproject.toml (the test suite installs from this lock and checks that it
# covers them).
set -euo pipefail
cd "$(dirname "$0")/.."
python=$(scripts/python313.sh)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check ".[functions]"
{
    echo "# What the Function App deploys with, at exact versions: written by scripts/lock.sh from"
    echo "# pyproject.toml (the runtime dependencies and the functions extra). Do not edit by hand."
    "$work/venv/bin/python" -m pip freeze --disable-pip-version-check --exclude message-vault
} >requirements.txt
echo "requirements.txt: $(grep -vc '^#' requirements.txt) packages"
