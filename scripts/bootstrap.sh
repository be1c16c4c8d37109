#!/usr/bin/env bash
# Makes the project's virtual environments; safe to run again (it only installs what is missing).
#   bootstrap.sh            .venv (Python 3.11+): vault_core and the `vault` command
#   bootstrap.sh functions  .venv-functions (Python 3.13): the Function App at requirements.txt's
#                           versions, what `func start` runs
#   bootstrap.sh dev        both, with the test tools; .venv-functions also gets Microsoft's Python
#                           worker library, which runs the app in the tests; the storage emulator
#                           (Azurite, from npm) and Chromium (Debian's) for the console's tests
# Python 3.13 is looked for by scripts/python313.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
pip_install() {
    "$1/bin/python" -m pip install --quiet --disable-pip-version-check -c requirements.txt "${@:2}"
}

if [ ! -x .venv/bin/python ]; then
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || { echo "Message Vault needs Python 3.11 or newer (set PYTHON=...)" >&2; exit 1; }
    "$python" -m venv .venv
fi

functions_venv() {
    [ -x .venv-functions/bin/python ] || "$(scripts/python313.sh)" -m venv .venv-functions
}

case "${1:-}" in
dev)
    pip_install .venv -e ".[dev]"
    functions_venv
    pip_install .venv-functions -e ".[functions-dev]"
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
    ;;
functions)
    functions_venv
    pip_install .venv-functions -e ".[functions]"
    ;;
*)
    pip_install .venv -e .
    ;;
esac
