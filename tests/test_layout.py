"""The layout's rules, checked in fresh interpreters: each concern is loaded only by what needs it."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support import ROOT


def modules_after(code: str) -> list[str]:
    """The modules a fresh interpreter has loaded after running `code` in the project root."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    command = [sys.executable, "-c", script]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_importing_vault_core_loads_no_storage_backend():
    loaded = modules_after("import vault_core")
    assert "vault_core.stores.base" in loaded
    backends = ("vault_core.stores.local", "vault_core.stores.blob", "vault_core.stores.tables", "azure")
    assert not [m for m in loaded if m.startswith(backends)]


def test_a_blob_store_loads_the_tables_sdk_only_for_checkpoints():
    store = "import vault_core\nvault_core.open_store('UseDevelopmentStorage=true', container='orders')"
    loaded = modules_after(store)
    assert "vault_core.stores.blob" in loaded
    assert not [m for m in loaded if m.startswith(("vault_core.stores.tables", "azure.data.tables"))]
    with_checkpoints = modules_after(f"{store}.checkpoints('billing')")
    assert "vault_core.stores.tables" in with_checkpoints
