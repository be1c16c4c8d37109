#!/usr/bin/env bash
# Runs Message Vault locally on the embedded store (./.vault-demo) and shows it working.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/vault demo --store .vault-demo
