#!/usr/bin/env bash
# Prints the path of a Python 3.13, the Function App's runtime: $PYTHON_FUNCTIONS, python3.13 on
# PATH, or pyenv's; or says what to do and exits 1.
set -euo pipefail
for candidate in "${PYTHON_FUNCTIONS:-}" "$(command -v python3.13 || true)" \
    "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13*/bin/python3.13; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] \
        && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null; then
        echo "$candidate"
        exit 0
    fi
done
echo "The Function App runs on Python 3.13, which was not found: install it (for example" \
    "'pyenv install 3.13') or set PYTHON_FUNCTIONS to a python3.13" >&2
exit 1
