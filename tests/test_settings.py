"""Every setting the Function App's code reads is set by the Bicep template and by
local.settings.sample.json. The code is read with ast: calls to `setting("NAME")`,
`os.environ.get("NAME")`, `os.getenv("NAME")` and `os.environ["NAME"]` in function_app.py and in
every vault_core module the app imports (the `vault` CLI's own options are not app settings),
plus the %NAME% references of host.json. Diagnostic switches that a deployment leaves unset are
explained in the README but not set by the Bicep or the sample."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from tests.support import ROOT

APP_CODE = [ROOT / "function_app.py", *sorted((ROOT / "vault_core").rglob("*.py"))]
# What the app never imports: the command line, and publishing an input (which keeps its progress
# in the user's state folder, $XDG_STATE_HOME, when it publishes through the HTTP API).
CLI_ONLY = {*(ROOT / "vault_core" / "cli").glob("*.py"), ROOT / "vault_core" / "publish.py"}
DIAGNOSTIC = {"VAULT_PURE_PYTHON"}


def settings_read_by(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            function = ast.unparse(node.func)
            if function in ("setting", "os.environ.get", "os.getenv", "environ.get"):
                names.add(node.args[0].value)
        environ = isinstance(node, ast.Subscript) and ast.unparse(node.value) in ("os.environ", "environ")
        if environ and isinstance(node.slice, ast.Constant):
            names.add(node.slice.value)
    return names


def settings_read_by_the_app() -> set[str]:
    names = set().union(*(settings_read_by(p) for p in APP_CODE if p not in CLI_ONLY))
    names |= set(re.findall(r"%(\w+)%", (ROOT / "host.json").read_text()))
    return names


def covered(name: str, provided: set[str]) -> bool:
    # An identity-based connection is set as NAME__accountName (and friends), not as NAME.
    return name in provided or any(p.startswith(f"{name}__") for p in provided)


def test_the_app_reads_the_settings_we_know_of():
    assert {"VAULT_STORE", "VAULT_CONTAINER", "VAULT_STAGING_CONTAINER", "VAULT_WAIT_SECONDS"} <= (
        settings_read_by_the_app()
    )


def test_local_settings_sample_sets_every_setting():
    values = set(json.loads((ROOT / "local.settings.sample.json").read_text())["Values"])
    missing = [n for n in sorted(settings_read_by_the_app() - DIAGNOSTIC) if not covered(n, values)]
    assert not missing, f"local.settings.sample.json misses {missing}"


def test_bicep_sets_every_setting():
    from tests.test_infra import bicep_app_setting_names

    provided = bicep_app_setting_names()
    missing = [n for n in sorted(settings_read_by_the_app() - DIAGNOSTIC) if not covered(n, provided)]
    assert not missing, f"the Bicep app settings miss {missing}"


def test_every_setting_is_explained_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    missing = [n for n in sorted(settings_read_by_the_app()) if f"`{n}`" not in readme]
    assert not missing, f"README.md does not explain {missing}"
