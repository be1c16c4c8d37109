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
from tests.support.azurite import busy_port, free_port_run, stop_process
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
    port = free_port_run(3)  # blobs, queues, tables
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


def test_the_emulator_on_a_busy_port_says_which_and_how_to_pick_another(tmp_path):
    with busy_port() as port:
        result = subprocess.run(
            [str(ROOT / "scripts" / "azurite.sh")],
            cwd=ROOT,
            env={**os.environ, "AZURITE_PORT": str(port - 2), "AZURITE_LOCATION": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1 and result.stdout == ""  # no connection string to a dead emulator
    assert f"port {port} on 127.0.0.1 is in use" in result.stderr and "AZURITE_PORT" in result.stderr


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
    # It ends with what to try next, which runs as printed.
    suggested = re.search(r"what to try next:\n  (\.venv/bin/vault read .*?)  +#", result.stdout)
    assert suggested, result.stdout
    command = suggested[1].strip().replace(".venv/bin/vault", str(Path(sys.executable).parent / "vault"))
    read = subprocess.run(command.split(), capture_output=True, text=True, timeout=60)
    assert read.returncode == 0 and read.stdout.count("order-paid") == 3, read.stderr


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
    store = vault_core.open_store(tmp_path / "data")
    assert [(m.key, m.value) for m in store.reader("orders-copy").replay()] == [
        (m.key, m.value) for m in store.reader("orders").replay()
    ]
    # Then the HTTP API's section: `vault serve` on ./data, and its commands beside it, in order.
    text = (ROOT / "README.md").read_text()
    http_section = text[text.index("## The HTTP API") :]
    served = re.search(r"```sh\n(.*?)```", http_section, re.S).group(1)
    assert served.startswith(".venv/bin/vault serve --store ./data --port 7071")
    beside = re.search(r"While it runs.*?```sh\n(.*?)```", http_section, re.S).group(1)
    server = Served(str(tmp_path / "data"), None)
    try:
        result = subprocess.run(
            ["bash", "-e", "-x", "-c", beside.replace("127.0.0.1:7071", f"127.0.0.1:{server.port}")],
            cwd=tmp_path,
            env={**os.environ, "VAULT_STORE": "./data"},  # still exported, as the section before left it
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    assert "nothing to publish: all 2 messages of orders.jsonl are in orders already" in result.stdout
    assert result.stdout.count("order-") == 2  # and the two read back
    # Run in the checkout, the examples leave nothing that git would pick up.
    left = [entry.name + ("/" if entry.is_dir() else "") for entry in tmp_path.iterdir()]
    for name in left:
        ignored = subprocess.run(["git", "check-ignore", "--no-index", "-q", name], cwd=ROOT)
        assert ignored.returncode == 0, f"{name}, which the README's examples leave, is not in .gitignore"


def test_the_layout_and_contributing_name_only_what_the_repository_has():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    readme = (ROOT / "README.md").read_text()
    texts = [
        readme[readme.index("## Layout") : readme.index("## Changes")],
        (ROOT / "CONTRIBUTING.md").read_text(),
    ]
    for text in texts:
        for path in set(re.findall(r"`([\w./-]+\.(?:py|js|sh|md|json|bicep|bicepparam|c|txt))`", text)):
            assert any(name == path or name.endswith("/" + path) for name in tracked), path
    assert (ROOT / "LICENSE").read_text().startswith("BSD 3-Clause License")
