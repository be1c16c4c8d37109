#!/usr/bin/env bash
# Creates .venv (Python 3.11+) with the project installed, at the versions the Function App deploys
# with (requirements.txt). `bootstrap.sh functions` adds the Azure Functions SDKs (what `func start`
# needs); `bootstrap.sh dev` adds those, the test tools, the storage emulator (Azurite, from npm)
# and Chromium (from Debian's packages) for the console's tests. Safe to run again: it only
# installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || { echo "Message Vault needs Python 3.11 or newer (set PYTHON=...)" >&2; exit 1; }
    "$python" -m venv .venv
fi
if [ "${1:-}" = dev ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -c requirements.txt -e ".[dev]"
    # npm ci empties node_modules first: only when the lock changed since the last install.
    lock=$(sha256sum package-lock.json | cut -d' ' -f1)
    if [ "$(cat node_modules/.installed-lock 2>/dev/null)" != "$lock" ]; then
        npm ci --no-audit --no-fund --loglevel=error
        echo "$lock" >node_modules/.installed-lock
    fi
    # The console's tests drive Debian's Chromium (Playwright only talks to it).
    if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
        root=$([ "$(id -u)" = 0 ] || echo sudo)
        export DEBIAN_FRONTEND=noninteractive
        $root apt-get install -y --no-install-recommends chromium >/dev/null \
            || { $root apt-get update >/dev/null && $root apt-get install -y --no-install-recommends chromium >/dev/null; } \
            || { echo "could not install Chromium, which the console's tests drive: install Debian's chromium package" >&2; exit 1; }
    fi
    # checkov pins libraries the test tools need newer: it gets a virtual environment of its own.
    [ -x .venv-checkov/bin/python ] || "$python" -m venv .venv-checkov
    .venv-checkov/bin/python -m pip install --quiet --disable-pip-version-check "checkov==3.3.30"
elif [ "${1:-}" = functions ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -c requirements.txt -e ".[functions]"
else
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -c requirements.txt -e .
fi
