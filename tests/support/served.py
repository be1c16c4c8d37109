"""Runs `vault serve` as a real subprocess on a free loopback port, for tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import vault_core
from tests.support import ROOT
from tests.support.azurite import free_port, stop_process


class Served:
    """A `vault serve` process on a free loopback port."""

    def __init__(
        self,
        target: str | None,
        container: str | None,
        *extra: str,
        port: int | None = None,
        env: dict[str, str] | None = None,
        log: Path | None = None,
    ) -> None:
        """`target`, `container`: given as options, unless None (then from `env`, say). `log`: a
        file for the server's stderr (else the test's)."""
        self.port = port or free_port()
        self.target, self.container = target, container
        options = [
            *(["--store", target] if target else []),
            *(["--container", container] if container else []),
        ]
        self.log = open(log, "ab") if log else None  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vault_core.cli", "serve", *options, "--port", str(self.port), *extra],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stderr=self.log,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.url}/api/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("vault serve did not start")
            time.sleep(0.1)

    def store(self) -> vault_core.Store:
        return vault_core.open_store(self.target, container=self.container)

    def kill(self) -> None:
        """As a crash: SIGKILL, nothing given back."""
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        stop_process(self.process)
        if self.log:
            self.log.close()


def served_on(request: pytest.FixtureRequest, kind: str, container: str) -> Served:
    """`vault serve` on the local store (`kind` "local", in a fresh directory) or on Azurite
    ("azurite", the session's), appending into `container`."""
    if kind == "local":
        target = str(request.getfixturevalue("tmp_path_factory").mktemp("served"))
    else:
        target = request.getfixturevalue("azurite").connection_string
    return Served(target, container)
