"""The README's examples run as written: each ```python block, in order, in one directory."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import vault_core
from tests.served import Served

ROOT = Path(__file__).resolve().parent.parent


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_examples_run(azurite, tmp_path):
    blocks = python_blocks()
    assert len(blocks) >= 4
    server = Served(str(tmp_path / "data"), "vault")  # what `vault serve --store ./data` runs
    env = {
        **os.environ,
        "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string,
        "VAULT_URL": server.url,
    }
    try:
        for block in blocks:
            result = subprocess.run(
                [sys.executable, "-c", block],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert result.returncode == 0, f"README example failed:\n{block}\n{result.stderr}"
    finally:
        server.stop()
    assert "order-shipped" in [
        m.key for m in vault_core.open_store(tmp_path / "data").reader("orders").replay()
    ]


def test_quickstart_commands_exist():
    text = (ROOT / "README.md").read_text()
    quickstart = re.search(r"## Quickstart.*?```sh\n(.*?)```", text, flags=re.S).group(1)
    commands = [line.split("#")[0].strip() for line in quickstart.splitlines() if line.strip()]
    assert commands == ["scripts/demo.sh", "scripts/test.sh"]
    assert all(os.access(ROOT / command, os.X_OK) for command in commands)
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_demo_runs_on_the_embedded_store(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "vault_core.cli", "demo", "--store", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "nothing appended" in result.stdout
    assert result.stdout.count("order-paid") == 3  # three batches replayed, the retry not appended


def test_cli_examples_run(tmp_path):
    """The `vault` command block runs as written, line by line, in a fresh directory."""
    block = re.search(r"## The `vault` command.*?```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    script = block.group(1)
    assert ".venv/bin/vault mirror" in script
    bin_dir = tmp_path / ".venv" / "bin"  # the examples call .venv/bin/vault, as after bootstrap
    bin_dir.mkdir(parents=True)
    (bin_dir / "vault").symlink_to(Path(sys.executable).parent / "vault")
    result = subprocess.run(
        ["bash", "-e", "-x", "-c", script],
        cwd=tmp_path,
        env={**os.environ, "VAULT_STORE": ""},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("published 2 messages in 1 batch to orders")
    assert any("order-paid\tbase64:/wD+" in line for line in lines)
    copied = [json.loads(line) for line in lines if line.startswith("{") and '"offset"' in line][-2:]
    assert [(m["key"], m.get("value"), m.get("value_b64")) for m in copied] == [
        ("order-created", '{"order": 7}', None),
        ("order-paid", None, "/wD+"),
    ]
