"""Message Vault's embedded store beside what a user would pick instead for an embedded or
self-hosted log, on the same messages with the same durability, in one run:

- SQLite as a log: WAL, synchronous=FULL, one transaction per batch (executemany), replayed by
  pages of the primary key; always (it is in Python's standard library);
- Redis Streams: AOF with appendfsync always, XADD pipelined per batch, replayed by XRANGE pages;
  when a `redis-server` binary is on PATH (Debian: `apt-get install redis-server`) and the
  `redis` package is installed (`.venv/bin/pip install redis`).

    .venv/bin/python bench/bench_peers.py               # about two minutes
    .venv/bin/python bench/bench_peers.py --quick       # a smoke run
    .venv/bin/python bench/bench_peers.py --markdown out.md

Every system appends the same batches (1,000 messages of a 16-byte key and a 100-byte value),
each batch durable before the next (the vault: data and commit record fdatasync'ed; SQLite: a
FULL-synchronous commit; Redis: fsync of the AOF before the reply), then replays everything,
touching each message's key and value. The systems take turns, in alternating order, and the
best run of each is kept. Scratch data goes to a temporary directory under /tmp.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from report import as_markdown, as_text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import vault_core  # noqa: E402
from vault_core import format as fmt  # noqa: E402

KEY_BYTES, VALUE_BYTES, BATCH = 16, 100, 1000
TARGETS = {"append": 2.5, "replay": 2.5}  # the vault's least acceptable ratio to SQLite's


def make_batches(count: int) -> list[list[vault_core.Message]]:
    """`count` batches of BATCH messages with random values, keys from a few contract names."""
    rng = random.Random(7)
    keys = [f"event-type-{i:05d}" for i in range(8)]
    assert all(len(key) == KEY_BYTES for key in keys)
    distinct = [
        [vault_core.Message(keys[i % 8], rng.randbytes(VALUE_BYTES)) for i in range(BATCH)] for _ in range(4)
    ]
    return [distinct[n % 4] for n in range(count)]


@dataclass
class Timing:
    system: str
    op: str
    seconds: float
    messages: int

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


class System:
    name = ""

    def append(self, batches: list[list[vault_core.Message]]) -> None: ...

    def replay(self) -> int: ...

    def close(self) -> None:
        pass


class Vault(System):
    name = "vault (local store)"

    def __init__(self, folder: Path) -> None:
        self.store = vault_core.open_store(folder)

    def append(self, batches: list[list[vault_core.Message]]) -> None:
        with self.store.writer("log") as writer:
            for batch in batches:
                writer.append(batch)

    def replay(self) -> int:
        count = 0
        for message in self.store.reader("log").replay():
            count += len(message.key) + len(message.value) > 0
        return count


class SQLite(System):
    name = "SQLite (WAL, synchronous=FULL)"

    def __init__(self, folder: Path) -> None:
        folder.mkdir()
        self.db = sqlite3.connect(folder / "log.db", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE log (id INTEGER PRIMARY KEY, ts INTEGER, key TEXT, value BLOB)")

    def append(self, batches: list[list[vault_core.Message]]) -> None:
        for batch in batches:
            stamp = fmt.now_ms()
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT INTO log (ts, key, value) VALUES (?, ?, ?)", [(stamp, k, v) for k, v in batch]
            )
            self.db.execute("COMMIT")

    def replay(self) -> int:
        count, last = 0, 0
        while True:
            rows = self.db.execute(
                "SELECT id, ts, key, value FROM log WHERE id > ? ORDER BY id LIMIT 10000", (last,)
            ).fetchall()
            if not rows:
                return count
            for _id, _ts, key, value in rows:
                count += len(key) + len(value) > 0
            last = rows[-1][0]

    def close(self) -> None:
        self.db.close()


class Redis(System):
    name = "Redis Streams (AOF, appendfsync always)"

    def __init__(self, folder: Path) -> None:
        import redis

        folder.mkdir()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.server = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(folder),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
        self.client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def append(self, batches: list[list[vault_core.Message]]) -> None:
        for batch in batches:
            pipe = self.client.pipeline(transaction=False)
            for key, value in batch:
                pipe.xadd("log", {"k": key, "v": value})
            pipe.execute()

    def replay(self) -> int:
        count, start = 0, "-"
        while True:
            entries = self.client.xrange("log", min=start, max="+", count=10000)
            if not entries:
                return count
            for _id, fields in entries:
                count += len(fields[b"k"]) + len(fields[b"v"]) > 0
            last = entries[-1][0].decode()
            millis, sequence = last.split("-")
            start = f"{millis}-{int(sequence) + 1}"

    def close(self) -> None:
        self.client.close()
        self.server.terminate()
        self.server.wait(10)


def redis_available() -> str | None:
    """Why Redis is left out, or None if it can run."""
    if shutil.which("redis-server") is None:
        return "no redis-server on PATH (Debian: apt-get install redis-server)"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "the redis package is not installed (.venv/bin/pip install redis)"
    return None


def measure(
    make: Callable[[Path], System], batches: list[list[vault_core.Message]], scratch: Path
) -> tuple[float, float]:
    folder = Path(tempfile.mkdtemp(dir=scratch))
    shutil.rmtree(folder)
    system = make(folder)
    try:
        started = time.perf_counter()
        system.append(batches)
        appended = time.perf_counter() - started
        started = time.perf_counter()
        replayed = system.replay()
        read = time.perf_counter() - started
        if replayed != len(batches) * BATCH:
            raise RuntimeError(f"{system.name} replayed {replayed} messages, not {len(batches) * BATCH}")
        return appended, read
    finally:
        system.close()
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer batches and rounds")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    count, rounds = (50, 1) if args.quick else (300, 3)
    batches = make_batches(count)
    systems: list[tuple[str, Callable[[Path], System]]] = [(Vault.name, Vault), (SQLite.name, SQLite)]
    missing = redis_available()
    if missing is None:
        systems.append((Redis.name, Redis))
    best: dict[tuple[str, str], float] = {}
    with tempfile.TemporaryDirectory(prefix="vault-bench-peers-", dir="/tmp") as scratch:
        for round_number in range(rounds):
            order = systems if round_number % 2 == 0 else systems[::-1]
            for name, make in order:
                appended, read = measure(make, batches, Path(scratch))
                print(
                    f"  round {round_number + 1}: {name}: append {appended:.2f} s, replay {read:.2f} s",
                    flush=True,
                )
                for op, seconds in (("append", appended), ("replay", read)):
                    best[(name, op)] = min(best.get((name, op), seconds), seconds)
    messages = count * BATCH
    compiled = "compiled record path" if fmt.COMPILED is not None else "pure Python (VAULT_PURE_PYTHON)"
    describe = (
        f"{messages:,} messages in batches of {BATCH:,} ({KEY_BYTES}-byte keys, {VALUE_BYTES}-byte values), "
        f"each batch durable before the next; best of {rounds}; {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}; the vault on its {compiled}."
    )
    rows = [["op", "system", "messages/s", "vault is", "target"]]
    for op in ("append", "replay"):
        vault_rate = messages / best[(Vault.name, op)]
        for name, _make in systems:
            rate = messages / best[(name, op)]
            ratio = "" if name == Vault.name else f"{vault_rate / rate:.2f}x faster"
            target = ""
            if name == SQLite.name:
                met = vault_rate / rate >= TARGETS[op]
                target = f">= {TARGETS[op]}x: {'met' if met else 'MISS'}"
            rows.append([op, name, f"{rate:,.0f}", ratio, target])
    print()
    print(describe)
    if missing:
        print(f"Redis Streams left out: {missing}")
    print(as_text(rows))
    if args.markdown:
        args.markdown.write_text(f"{describe}\n\n{as_markdown(rows)}\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
