"""infra/deploy.sh, run as a user runs it, against stand-ins for the `az` and `func` commands (no
Azure here): what it calls, in what order, and how it rides out a first publish that fails while
the app's new role assignments are still being applied."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support import ROOT

FAKE_AZ = """#!/usr/bin/env bash
echo "az $*" >> "$CALLS"
case "$1 $2 $3" in
    "account show "*) exit 0 ;;
    "group show "*) exit 3 ;;  # no such group yet
    "group create "*) exit 0 ;;
    "deployment group create") exit 0 ;;
    "deployment group show")
        case "$*" in
            *functionAppName*) echo vault-app ;;
            *functionAppUrl*) echo https://vault-app.azurewebsites.net/api ;;
            *storageAccountName*) echo vaultstorage ;;
        esac ;;
    *) echo "unexpected: az $*" >&2; exit 2 ;;
esac
"""

FAKE_FUNC = """#!/usr/bin/env bash
echo "func $*" >> "$CALLS"
if [ "$1" = --version ]; then echo 4.0.6280; exit 0; fi
failed=$(grep -c "functionapp publish" "$CALLS")
if [ "$failed" -le "$PUBLISH_FAILURES" ]; then
    echo "Error: 403 AuthorizationPermissionMismatch" >&2
    exit 1
fi
echo "Deployment completed successfully."
"""


def deploy(
    tmp_path: Path, publish_failures: int, attempts: int = 8
) -> tuple[subprocess.CompletedProcess, list[str]]:
    tools = tmp_path / "bin"
    tools.mkdir()
    for name, script in (("az", FAKE_AZ), ("func", FAKE_FUNC)):
        (tools / name).write_text(script)
        (tools / name).chmod(0o755)
    calls = tmp_path / "calls"
    calls.touch()
    env = {
        **os.environ,
        "PATH": f"{tools}:{os.environ['PATH']}",
        "CALLS": str(calls),
        "PUBLISH_FAILURES": str(publish_failures),
        "DEPLOY_RETRY_SECONDS": "0",
        "DEPLOY_PUBLISH_ATTEMPTS": str(attempts),
    }
    done = subprocess.run(
        ["infra/deploy.sh", "my-rg", "westeurope"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done, calls.read_text().splitlines()


def test_deploy_provisions_then_publishes_and_prints_the_api(tmp_path):
    done, calls = deploy(tmp_path, publish_failures=0)
    assert done.returncode == 0, done.stderr
    assert calls[-1] == "func azure functionapp publish vault-app --python"
    assert any(c.startswith("az deployment group create") and "infra/main.bicep" in c for c in calls)
    assert "https://vault-app.azurewebsites.net/api" in done.stdout


def test_a_first_publish_that_fails_while_roles_propagate_is_retried(tmp_path):
    done, calls = deploy(tmp_path, publish_failures=2)
    assert done.returncode == 0, done.stderr
    assert sum("functionapp publish" in c for c in calls) == 3
    assert "role assignments can take minutes" in done.stderr


def test_publishing_gives_up_after_its_attempts_with_what_to_do(tmp_path):
    done, calls = deploy(tmp_path, publish_failures=99, attempts=3)
    assert done.returncode == 1
    assert sum("functionapp publish" in c for c in calls) == 3
    assert "run infra/deploy.sh again" in done.stderr


def test_publishing_leaves_out_every_local_artefact_and_keeps_the_app():
    import pathspec

    ignored = pathspec.PathSpec.from_lines("gitignore", (ROOT / ".funcignore").read_text().splitlines())
    local = [
        ".venv/bin/python",
        ".venv-checkov/bin/checkov",
        "message_vault.egg-info/PKG-INFO",
        "node_modules/.bin/azurite",
        "local.settings.json",
        "__azurite_db_blob__.json",
        "__blobstorage__/0f2a",
        "__queuestorage__/1b3c",
        "AzuriteConfig",
        ".vault-demo/orders/log",
        "data/orders/log",
        "copy/orders/log",
        "orders.jsonl",
        "tests/test_deploy.py",
        "vault_core/__pycache__/writer.cpython-311.pyc",
        ".pytest_cache/v/cache/lastfailed",
        ".schemathesis/default/cache/crashes/manifest.json",
        ".gitignore",
    ]
    assert [path for path in local if not ignored.match_file(path)] == []
    app = ["function_app.py", "host.json", "requirements.txt", "vault_core/writer.py", "vault_core/py.typed"]
    assert [path for path in app if ignored.match_file(path)] == []
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    shipped = [path for path in tracked.stdout.split() if not ignored.match_file(path)]
    assert all(path in app or path.startswith("vault_core/") for path in shipped), shipped
