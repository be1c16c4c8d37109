"""scripts/smoke.py, the post-deploy check, run as a user runs it: a subprocess against `vault serve`."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from tests.support import ROOT
from tests.support.azurite import free_port
from tests.support.served import Served

SMOKE = ROOT / "scripts" / "smoke.py"


def smoke(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SMOKE), url, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def served(tmp_path):
    server = Served(str(tmp_path / "data"), "vault")
    yield server
    server.stop()


@pytest.fixture
def served_with_key(tmp_path):
    server = Served(str(tmp_path / "data"), "vault", "--api-key", "s3cret")
    yield server
    server.stop()


def assert_passed(result: subprocess.CompletedProcess[str], messages: int) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    for step in ("publish", "retry", "stream_info", "replay", "read"):
        assert any(line.startswith(step + " ") for line in result.stdout.splitlines()), result.stdout
    assert f"{messages} messages match" in result.stdout
    assert "the retry appended nothing" in result.stdout
    assert result.stdout.rstrip().endswith("OK")


def test_smoke_passes_on_the_local_store(served):
    result = smoke(f"{served.url}/api", "--stream", "smoke-local", "--messages", "25")
    assert_passed(result, 25)
    # The batch is in the stream exactly once: the retry appended nothing.
    assert len(list(served.store().reader("smoke-local").replay())) == 25


def test_smoke_uses_a_new_stream_by_default(served):
    assert_passed(smoke(served.url), 100)
    assert_passed(smoke(served.url, "--messages", "1"), 1)
    streams = served.store().streams()
    assert len(streams) == 2
    assert all(name.startswith("smoke-") for name in streams)


def test_smoke_passes_with_the_key(served_with_key):
    assert_passed(smoke(f"{served_with_key.url}/api", "--key", "s3cret", "--messages", "10"), 10)


@pytest.mark.parametrize("key", [["--key", "wrong"], []], ids=["wrong-key", "no-key"])
def test_smoke_fails_without_the_right_key(served_with_key, key):
    result = smoke(f"{served_with_key.url}/api", *key, "--stream", "refused")
    assert result.returncode == 1
    assert "FAILED" in result.stderr
    assert "refused the key" in result.stderr
    assert "401" in result.stderr
    assert "OK" not in result.stdout
    assert "refused" not in served_with_key.store().streams()


def test_smoke_fails_when_nothing_listens(tmp_path):
    result = smoke(f"http://127.0.0.1:{free_port()}/api", "--timeout", "1")
    assert result.returncode == 1
    assert "FAILED" in result.stderr


def test_smoke_refuses_a_bad_stream_name():
    result = smoke("http://127.0.0.1:1/api", "--stream", "Not-Valid")
    assert result.returncode == 2
    assert "invalid stream name" in result.stderr


def test_smoke_is_importable(served, capsys):
    spec = importlib.util.spec_from_file_location("smoke", SMOKE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([served.url, "--messages", "3"]) == 0
    assert "3 messages match" in capsys.readouterr().out
