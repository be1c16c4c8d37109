"""A proxy on the wire between the vault and Azurite that counts the storage requests that cross
it, by kind: what a deployment pays for in transactions. It reads each request's line, headers
and body (by Content-Length, which the Azure SDK always sends) as it forwards them, so it counts
requests, not connections; the answers pass through untouched. It runs on its own event loop in
a thread, on a free loopback port.

    with StorageProxy(azurite.blob_port) as proxy:
        store = vault_core.open_store(proxy.connection_string(azurite), ...)
        ...
        proxy.requests  # Counter({"PUT page": ..., "GET blob": ..., ...})
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any
from urllib.parse import parse_qs, urlsplit


class StorageProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.requests: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="storage-proxy", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def __enter__(self) -> StorageProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connection_string(self, azurite: Any) -> str:
        """Azurite's connection string with its blob endpoint moved to this proxy."""
        return azurite.connection_string.replace(
            f"127.0.0.1:{self.upstream_port}/", f"127.0.0.1:{self.port}/"
        )

    def total(self) -> int:
        with self._lock:
            return sum(self.requests.values())

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # --- the loop

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._connection, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _connection(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_writer.close()
            return
        answers = asyncio.ensure_future(self._pipe(upstream_reader, client_writer))
        try:
            while True:
                head = await client_reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _version = lines[0].split(" ", 2)
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                self._count(method, target)
                upstream_writer.write(head)
                while length:
                    chunk = await client_reader.read(min(length, 1 << 20))
                    if not chunk:
                        raise ConnectionError("the client left mid-body")
                    upstream_writer.write(chunk)
                    length -= len(chunk)
                await upstream_writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ValueError):
            pass
        finally:
            upstream_writer.close()
            await asyncio.gather(answers, return_exceptions=True)
            client_writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(1 << 20):
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    def _count(self, method: str, target: str) -> None:
        """A request's kind: its method and what it acts on (`comp=`, or a blob or container)."""
        query = parse_qs(urlsplit(target).query)
        comp = query.get("comp", [""])[0]
        restype = query.get("restype", [""])[0]
        kind = f"{method} {comp or restype or 'blob'}"
        with self._lock:
            self.requests[kind] += 1
