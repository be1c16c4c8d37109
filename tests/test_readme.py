"""The README's examples run as written: each ```python block, in order, in one directory."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import vault_core
from tests.support import ROOT
from tests.support.azurite import free_port, stop_process
from tests.support.served import Served


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


@contextlib.contextmanager
def emulator(location: Path, port: int | None = None) -> Iterator[str]:
    """scripts/azurite.sh, as the README runs it; yields the connection string it printed."""
    env = {**os.environ, "AZURITE_LOCATION": str(location)}
    if port is not None:
        env["AZURITE_PORT"] = str(port)
    process = subprocess.Popen(
        [str(ROOT / "scripts" / "azurite.sh")], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        printed = process.stdout.readline().strip()  # type: ignore[union-attr]
        assert printed.startswith("export AZURE_STORAGE_CONNECTION_STRING='"), printed
        yield printed.split("=", 1)[1].strip("'")
    finally:
        stop_process(process)


def test_readme_examples_run(tmp_path):
    """Every python block, with the emulator the README starts (scripts/azurite.sh) for the ones
    that use Azure Storage and `vault serve` for the ones that use the HTTP API."""
    blocks = python_blocks()
    assert len(blocks) >= 4
    server = Served(str(tmp_path / "data"), "vault")  # what `vault serve --store ./data` runs
    port = free_port()
    with emulator(tmp_path / "azurite", port) as connection_string:
        env = {**os.environ, "AZURE_STORAGE_CONNECTION_STRING": connection_string, "VAULT_URL": server.url}
        wait_for_port(port)
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
        payments = vault_core.open_store(connection_string).reader("payments")
        assert [m.key for m in payments.replay()] == ["payment-captured"]
    assert "order-shipped" in [
        m.key for m in vault_core.open_store(tmp_path / "data").reader("orders").replay()
    ]


def test_the_readmes_emulator_command_prints_the_connection_string_it_shows(tmp_path):
    block = re.search(r"```sh\n(scripts/azurite\.sh.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    shown = re.search(r"export AZURE_STORAGE_CONNECTION_STRING='(.*?)'", block).group(1)
    with emulator(tmp_path / "azurite") as printed:  # on the default ports, as a user runs it
        assert printed == shown


def wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


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
