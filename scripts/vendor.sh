#!/usr/bin/env bash
# Copies the console's front-end packages, pinned in package.json and package-lock.json, from
# node_modules into vault_core/console/vendor/, where the package ships them (the console loads
# nothing from a CDN). Run it after changing their versions; tests/test_console.py checks that the
# copies are what the lock installs.
set -euo pipefail
cd "$(dirname "$0")/.."
vendor=vault_core/console/vendor
mkdir -p "$vendor"
cp node_modules/crc-32/crc32c.js "$vendor/crc32c.js"
cp node_modules/uplot/dist/uPlot.iife.min.js node_modules/uplot/dist/uPlot.min.css "$vendor/"
cp node_modules/crc-32/LICENSE "$vendor/LICENSE.crc-32"
cp node_modules/uplot/LICENSE "$vendor/LICENSE.uplot"
echo "vendored: $(ls "$vendor" | tr '\n' ' ')"
