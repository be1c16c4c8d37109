"""A proxy on the wire between the vault and Azurite that counts the storage requests crossing
it, by kind (what a deployment pays for in transactions), and injects the faults storage and its
network have, request by request:

- `reset`: the connection is reset before the request reaches storage;
- `drop`: storage applies the request, and the caller's connection is cut before the answer;
- `busy` / `timeout`: storage's own throttling and timeout answers, `503 Server Busy` and
  `500 Operation timed out` with Retry-After, in place of forwarding;
- `delay`: a share of requests held a while before forwarding; `latency`: every request held.

It reads each request and each answer whole (by Content-Length or chunked), so a fault falls on
one request of a kept-alive connection, never on a connection as a whole. Faults are drawn from a
seeded generator; `inject()` changes them while traffic runs (a calm phase, then a faulty one).
It runs on its own event loop in a thread, on a free loopback port.

    with StorageProxy(azurite.port, Faults(reset=0.02, drop=0.02, seed=7)) as proxy:
        store = vault_core.open_store(proxy.connection_string(azurite), ...)
        ...
        proxy.requests  # Counter({"PUT page": ..., "GET blob": ..., ...})
        proxy.faults    # Counter({"reset": ..., "drop": ..., ...})
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

FAULTS = ("reset", "drop", "busy", "timeout")
# Storage's words for its own throttling and timeouts (the x-ms-error-code an SDK reads).
ANSWERS = {
    "busy": (503, "Server Busy", "ServerBusy", "The server is busy."),
    "timeout": (
        500,
        "Operation timed out",
        "OperationTimedOut",
        "Operation could not be completed within the specified time.",
    ),
}


@dataclass(frozen=True)
class Faults:
    """What happens to each request: the chance of each fault, and the delays."""

    reset: float = 0.0
    drop: float = 0.0
    busy: float = 0.0
    timeout: float = 0.0
    delay: float = 0.0  # the chance that a request is held for a time in `delay_seconds`
    delay_seconds: tuple[float, float] = (0.05, 0.4)
    latency: tuple[float, float] = (0.0, 0.0)  # every request held this long (uniform)
    retry_after: int = 1  # seconds, on busy and timeout answers
    seed: int = 0
    # Which requests may be faulted, by kind ("PUT page", "GET blob", ...); all when None.
    only: Callable[[str], bool] | None = None

    def draw(self, rng: random.Random, kind: str) -> tuple[str | None, float]:
        """A request's fault (or None) and how long it is held first."""
        held = rng.uniform(*self.latency) if self.latency[1] else 0.0
        if self.delay and rng.random() < self.delay:
            held += rng.uniform(*self.delay_seconds)
        if self.only is not None and not self.only(kind):
            return None, held
        roll = rng.random()
        for fault in FAULTS:
            chance = getattr(self, fault)
            if roll < chance:
                return fault, held
            roll -= chance
        return None, held


CALM = Faults()


@dataclass
class _Message:
    head: bytes  # the start line and headers, with the blank line
    body: bytes
    keep_alive: bool


class StorageProxy:
    def __init__(self, upstream_port: int, faults: Faults = CALM) -> None:
        self.upstream_port = upstream_port
        self.requests: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._plan = faults
        self._rng = random.Random(faults.seed)
        self._loop = asyncio.new_event_loop()
        self._open: set[asyncio.StreamWriter] = set()  # the callers' connections (the loop's own)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="storage-proxy", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def __enter__(self) -> StorageProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connection_string(self, azurite: Any) -> str:
        """A connection string (Azurite's, or one given) with this proxy's upstream endpoint moved
        to the proxy."""
        given = azurite if isinstance(azurite, str) else azurite.connection_string
        return given.replace(f"127.0.0.1:{self.upstream_port}/", f"127.0.0.1:{self.port}/")

    def inject(self, faults: Faults) -> None:
        """From now on, treat requests by `faults` (drawn from its own seed)."""
        with self._lock:
            self._plan, self._rng = faults, random.Random(faults.seed)

    def total(self) -> int:
        with self._lock:
            return sum(self.requests.values())

    def faulted(self) -> int:
        with self._lock:
            return sum(self.faults.values())

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
        # Connections still open end here, on this loop, before it closes: cut, they end their
        # tasks themselves (a task cancelled under the server would be logged as an error).
        for writer in list(self._open):
            writer.transport.abort()
        pending = asyncio.all_tasks(self._loop)
        self._loop.run_until_complete(asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 5))
        self._loop.close()

    async def _connection(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._open.add(client_writer)
        try:
            while True:
                request = await _read_message(client_reader, request=True)
                if request is None:
                    return
                method, target = request.head.split(b" ", 2)[:2]
                kind = self._count(method.decode("latin-1"), target.decode("latin-1"))
                with self._lock:
                    fault, held = self._plan.draw(self._rng, kind)
                    retry_after = self._plan.retry_after
                    if fault is not None:
                        self.faults[fault] += 1
                if held:
                    await asyncio.sleep(held)
                if fault == "reset":
                    _reset(client_writer)
                    return
                if fault in ANSWERS:
                    client_writer.write(_storage_error(fault, request.head, retry_after))
                    await client_writer.drain()
                    continue
                answer = None
                for _attempt in range(2):
                    # Storage closes a connection idle for a while (Azurite after 5 s): a request
                    # sent on one that was closed meanwhile goes again on a new one, as a front end
                    # between the caller and storage would send it, not as a fault of ours.
                    reused = upstream is not None
                    if upstream is None:
                        upstream = await asyncio.open_connection("127.0.0.1", self.upstream_port)
                    try:
                        upstream[1].write(request.head + request.body)
                        await upstream[1].drain()
                        answer = await _read_message(upstream[0], request=False, method=method)
                    except ConnectionError:  # reset before an answer began
                        answer = None
                    if answer is not None or not reused:
                        break
                    upstream[1].close()
                    upstream = None
                if answer is None:
                    _reset(client_writer)
                    return
                if fault == "drop":  # storage applied it; the caller never hears
                    _reset(client_writer)
                    return
                client_writer.write(answer.head + answer.body)
                await client_writer.drain()
                if not (request.keep_alive and answer.keep_alive):
                    return
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, OSError, ValueError):
            pass
        finally:
            self._open.discard(client_writer)
            if upstream is not None:
                upstream[1].close()
            client_writer.close()

    def _count(self, method: str, target: str) -> str:
        """A request's kind: its method and what it acts on (`comp=`, or a blob or container)."""
        query = parse_qs(urlsplit(target).query)
        comp = query.get("comp", [""])[0]
        restype = query.get("restype", [""])[0]
        kind = f"{method} {comp or restype or 'blob'}"
        with self._lock:
            self.requests[kind] += 1
        return kind


async def _read_message(
    reader: asyncio.StreamReader, *, request: bool, method: bytes = b""
) -> _Message | None:
    """One HTTP/1.1 message, whole: None where the connection ended before one began."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as error:
        if error.partial:
            raise
        return None
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    keep_alive = headers.get("connection", "").lower() != "close"
    status = 0 if request else int(lines[0].split(" ", 2)[1])
    if not request and (method == b"HEAD" or status in (204, 304) or status < 200):
        return _Message(head, b"", keep_alive)
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            body += size_line
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                body += await reader.readuntil(b"\r\n")  # trailers end in an empty line
                return _Message(head, bytes(body), keep_alive)
            body += await reader.readexactly(size + 2)
    if "content-length" in headers:
        return _Message(head, await reader.readexactly(int(headers["content-length"])), keep_alive)
    if request:
        return _Message(head, b"", keep_alive)
    return _Message(head, await reader.read(), False)  # an answer that ends with its connection


def _reset(writer: asyncio.StreamWriter) -> None:
    """Cut the connection with a TCP reset, as a failing network or front end does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _storage_error(fault: str, request_head: bytes, retry_after: int) -> bytes:
    """Storage's answer for `fault`: XML for the blob service, JSON for Table storage's."""
    status, reason, code, text = ANSWERS[fault]
    if b"application/json" in request_head.lower():
        body = json.dumps(
            {"odata.error": {"code": code, "message": {"lang": "en-US", "value": text}}}
        ).encode()
        content_type = "application/json;odata=minimalmetadata"
    else:
        body = (
            f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code>'
            f"<Message>{text}</Message></Error>"
        ).encode()
        content_type = "application/xml"
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        f"x-ms-error-code: {code}\r\nRetry-After: {retry_after}\r\n\r\n"
    )
    return head.encode("latin-1") + body
