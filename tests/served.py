"""Runs `vault serve` as a real subprocess on a free loopback port, for tests."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx

import vault_core
from tests.azurite import ROOT, free_port, stop_process


class Served:
    """A `vault serve` process on a free loopback port."""

    def __init__(self, target: str, container: str, *extra: str) -> None:
        self.port = free_port()
        self.target, self.container = target, container
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vault_core.cli",
                "serve",
                "--store",
                target,
                "--container",
                container,
                "--port",
                str(self.port),
                *extra,
            ],
            cwd=ROOT,
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

    def stop(self) -> None:
        stop_process(self.process)
