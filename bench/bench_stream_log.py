"""Append and read throughput of the stream log, and replay memory, each figure beside a raw
baseline measured in the same run on the same bytes.

    /tmp/v/bin/python bench/bench_stream_log.py                 # the full run, a few minutes
    /tmp/v/bin/python bench/bench_stream_log.py --quick         # a smoke run, under a minute
    /tmp/v/bin/python bench/bench_stream_log.py --markdown out.md

docs/performance.md explains what is measured and how to read it. Scratch data lives in a
temporary directory under /tmp; Azurite runs in memory on 127.0.0.1 for the run and is stopped at
its end. Nothing is written into the repository unless --markdown FILE is given.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from report import as_markdown, as_text

import vault_core
from vault_core import format as fmt
from vault_core.framing import REPLAY_CHUNK

# The Azure SDK is imported only where it is used: this process should be small when it starts
# the replay-memory child (see replay_memory).
if TYPE_CHECKING:
    from azure.storage.blob import BlobClient

ROOT = Path(__file__).resolve().parent.parent
MB = 1_000_000  # figures are in decimal megabytes

KEY_BYTES = 16
BIG_VALUE, BIG_BATCH = 64 * 1024, 64  # 4 MiB of values a batch (4.2 MB with keys and headers)
SMALL_VALUE, SMALL_BATCH = 100, 1000
DISTINCT_BATCHES = 4  # batches are cycled from a few distinct ones, so inputs take little memory
DISTINCT_KEYS = 8  # keys are contract names: few distinct ones, as in real streams
WARMUP_BATCHES = 4
STREAM = "bench"
VERBOSE = False  # --verbose: print every timed run

# Targets: the least acceptable ratio of vault throughput to its baseline's.
TARGET_BIG_APPEND = 0.8
TARGET_BIG_READ_LOCAL = 0.5
TARGET_BIG_READ_AZURITE = 0.8
TARGET_SMALL_READ_LOCAL = 0.6
TARGET_SMALL_APPEND_LOCAL = 0.4
TARGET_SMALL_APPEND_AZURITE = 0.8
TARGET_SMALL_READ_AZURITE = 0.6
TARGET_REPLAY_PEAK_MB = 150

SIZES = {
    # name: (full, quick)
    "big_local_mib": (512, 64),
    "big_azurite_mib": (256, 32),
    "small_local": (500_000, 50_000),
    "small_azurite": (200_000, 20_000),
    "replay_mib": (1024, 256),
    "repeats": (5, 1),
}


# --- inputs ---------------------------------------------------------------------------------


def make_batches(
    count: int, per_batch: int, value_size: int, seed: int = 1
) -> list[list[vault_core.Message]]:
    """`count` batches cycled from a few distinct ones of random (incompressible) values."""
    rng = random.Random(seed)
    keys = [f"event-type-{i:05d}" for i in range(DISTINCT_KEYS)]
    assert all(len(k) == KEY_BYTES for k in keys)
    distinct = [
        [vault_core.Message(keys[i % DISTINCT_KEYS], rng.randbytes(value_size)) for i in range(per_batch)]
        for _ in range(min(count, DISTINCT_BATCHES))
    ]
    return [distinct[i % len(distinct)] for i in range(count)]


class Write(NamedTuple):
    offset: int  # where in the log the writer writes: page-aligned
    data: memoryview  # whole pages: the partial page before the batch, the batch, zero padding
    batch: memoryview  # the batch's own bytes
    position: int  # the stream's length after the batch


def encode_like_writer(batches: Sequence[Sequence[vault_core.Message]]) -> list[Write]:
    """The data writes a StreamWriter makes for these batches (its commits aside): each batch is
    encoded after the partial last page of the log so far and padded to whole pages, exactly as
    StreamWriter._append does, so the baselines move the very bytes the vault moves."""
    writes = []
    position = 0
    tail = b""
    for messages in batches:
        batch = fmt.prepare_batch(messages)
        fmt.seal_batch(batch, position=position, timestamp_ms=fmt.now_ms())
        end = len(tail) + len(batch.buffer)
        view = memoryview(b"".join((tail, batch.buffer, bytes(-end % fmt.PAGE))))
        offset = fmt.data_at(position) - len(tail)
        position += len(batch.buffer)
        writes.append(Write(offset, view, view[len(tail) : end], position))
        tail = bytes(view[end - fmt.data_at(position) % fmt.PAGE : end])
    return writes


# --- timed operations: each returns the seconds of its timed part alone ----------------------


def vault_append(
    store: vault_core.Store, batches: Sequence[Sequence[vault_core.Message]], producers: int = 1
) -> float:
    """Appends by one producer, or by several threads sharing the writer (whose appends then
    commit together: one data write and one commit for all batches queued meanwhile)."""
    with store.writer(STREAM) as writer:  # opening (lock or lease) is not timed
        start = time.perf_counter()
        if producers == 1:
            for messages in batches:
                writer.append(messages)
        else:
            with ThreadPoolExecutor(producers) as pool:
                deque(pool.map(writer.append, batches), maxlen=0)
        return time.perf_counter() - start


def vault_replay(store: vault_core.Store, expected_messages: int) -> float:
    with store.reader(STREAM) as reader:
        counter = itertools.count()
        start = time.perf_counter()
        # zip and deque consume in C: the figure is the reader's cost, not a Python loop's.
        deque(zip(reader.replay(), counter, strict=False), maxlen=0)
        elapsed = time.perf_counter() - start
    _check_count("vault replay", next(counter), expected_messages)
    return elapsed


def file_write(path: Path, chunks: Sequence[memoryview]) -> float:
    """Plain appends, each made durable with fdatasync (the call the local store uses)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        start = time.perf_counter()
        for chunk in chunks:
            _write_all(fd, chunk)
            os.fdatasync(fd)
        return time.perf_counter() - start
    finally:
        os.close(fd)


def file_read(path: Path, start: int, length: int) -> float:
    """Plain sequential reads, in the reader's chunk size."""
    with open(path, "rb", buffering=0) as file:
        began = time.perf_counter()
        file.seek(start)
        remaining = length
        while remaining > 0:
            data = file.read(min(REPLAY_CHUNK, remaining))
            if not data:
                raise RuntimeError(f"{path} is shorter than expected")
            remaining -= len(data)
        return time.perf_counter() - began


def floor_append(path: Path, batches: Sequence[Sequence[tuple[bytes, bytes]]]) -> float:
    """The bare-Python floor of an append: pack each record's header (the format's layout), join
    a batch, write it and fdatasync. No validation, no checksum, no commit record."""
    pack = fmt.RECORD_HEADER.pack
    header = bytes(fmt.BATCH_HEADER.size)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        start = time.perf_counter()
        for records in batches:
            parts = [header]
            at = fmt.BATCH_HEADER.size
            for key, value in records:
                parts.append(pack(at, len(value), len(key)))
                parts.append(key)
                parts.append(value)
                at += fmt.RECORD_HEADER.size + len(key) + len(value)
            _write_all(fd, b"".join(parts))
            os.fdatasync(fd)
        return time.perf_counter() - start
    finally:
        os.close(fd)


def floor_read(data: bytes, expected_messages: int) -> float:
    """The bare-Python floor of a read over bytes already in memory: per record, unpack the small
    header and slice key and value into a tuple shaped like StoredMessage. No I/O, no checksum,
    no key decoding, no checks."""
    unpack_batch = fmt.BATCH_HEADER.unpack_from
    unpack = fmt.RECORD_HEADER.unpack_from
    record_header = fmt.RECORD_HEADER.size
    count = 0
    start = time.perf_counter()
    at = 0
    end = len(data)
    while at < end:
        _m, _c, _v, _f, id_len, _r, length, _p, timestamp, _n, _r2 = unpack_batch(data, at)
        index = at + fmt.BATCH_HEADER.size + id_len
        batch_end = at + length
        records = []
        append = records.append
        while index < batch_end:
            _back, value_len, key_len = unpack(data, index)
            key_at = index + record_header
            value_at = key_at + key_len
            next_index = value_at + value_len
            append((index, timestamp, data[key_at:value_at], data[value_at:next_index]))
            index = next_index
        count += len(records)
        at = batch_end
    elapsed = time.perf_counter() - start
    _check_count("floor read", count, expected_messages)
    return elapsed


def put_pages(blob: BlobClient, writes: Sequence[Write]) -> float:
    """Raw Put Page of the writer's data writes, cut as the writer cuts them (<= 4 MiB each)."""
    from vault_core.stores.blob import MAX_PUT_PAGE

    start = time.perf_counter()
    for write in writes:
        for at in range(0, len(write.data), MAX_PUT_PAGE):
            piece = write.data[at : at + MAX_PUT_PAGE]
            blob.upload_page(piece, offset=write.offset + at, length=len(piece))
    return time.perf_counter() - start


def get_ranges(blob: BlobClient, start: int, length: int) -> float:
    """Raw ranged Get Blob in the reader's chunk size, one request at a time."""
    began = time.perf_counter()
    for at in range(start, start + length, REPLAY_CHUNK):
        size = min(REPLAY_CHUNK, start + length - at)
        data = blob.download_blob(offset=at, length=size, max_concurrency=1).readall()
        if len(data) != size:
            raise RuntimeError(f"short read at {at}")
    return time.perf_counter() - began


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _check_count(what: str, got: int, expected: int) -> None:
    if got != expected:
        raise RuntimeError(f"{what} saw {got} messages, expected {expected}")


# --- cases ----------------------------------------------------------------------------------


@dataclass
class Row:
    values: str  # "64 KiB" or "100 B"
    store: str
    op: str
    baseline: str
    nbytes: int  # stream bytes moved, the same for the vault and its baseline
    messages: int
    vault_seconds: float
    base_seconds: float
    target: float

    @property
    def ratio(self) -> float:
        return self.base_seconds / self.vault_seconds

    @property
    def passed(self) -> bool:
        return self.ratio >= self.target


class Case:
    """One workload on one store: appends and reads by the vault and by its baselines. The vault
    side always leaves its stream in place, so reads read what the last append wrote."""

    store_name: str
    append_baseline: str
    read_baseline: str

    def __init__(self, values: str, batches: list[list[vault_core.Message]]) -> None:
        self.values = values
        self.batches = batches
        self.writes = encode_like_writer(batches)
        self.messages = 0  # in the stream the vault wrote last

    producers = 1  # > 1: also measure appends by that many threads sharing one writer

    def vault_append(self, count: int, producers: int = 1) -> float:
        raise NotImplementedError

    def base_append(self, count: int) -> float:
        raise NotImplementedError

    def vault_read(self) -> float:
        raise NotImplementedError

    def base_read(self) -> float:
        raise NotImplementedError

    def run(self, repeats: int, targets: tuple[float, float]) -> list[Row]:
        count = len(self.batches)
        warm = min(WARMUP_BATCHES, count)
        for step in (self.base_append, self.vault_append):
            step(warm)
        for step in (self.base_read, self.vault_read):
            step()
        append = best_of(repeats, lambda: self.vault_append(count), lambda: self.base_append(count))
        read = best_of(repeats, self.vault_read, self.base_read)
        nbytes, messages = self.writes[-1].position, count * len(self.batches[0])

        def row(op: str, baseline: str, seconds: tuple[float, float], target: float) -> Row:
            return Row(self.values, self.store_name, op, baseline, nbytes, messages, *seconds, target)

        rows = [
            row("append", self.append_baseline, append, targets[0]),
            row("read", self.read_baseline, read, targets[1]),
        ]
        if self.producers > 1:
            grouped = best_of(
                repeats, lambda: self.vault_append(count, self.producers), lambda: self.base_append(count)
            )
            rows.append(row(f"append x{self.producers}", self.append_baseline, grouped, targets[0]))
        return rows

    def stream_length(self) -> int:
        """The length of the stream the vault wrote last."""
        return self.writes[self.messages // len(self.batches[0]) - 1].position


class LocalCase(Case):
    store_name = "local"

    def __init__(
        self, values: str, batches: list[list[vault_core.Message]], root: Path, *, floor: bool
    ) -> None:
        super().__init__(values, batches)
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.store = vault_core.open_store(root / "vault")
        self.log = root / "vault" / STREAM / "log"
        self.raw = root / "raw"
        self.floor = floor
        if floor:
            self.append_baseline = "Python floor: pack+join, write+fdatasync"
            self.read_baseline = "Python floor: unpack+slice in memory"
            # The floor starts from keys already encoded; batches repeat, and so do their records.
            encoded = {id(batch): [(key.encode(), value) for key, value in batch] for batch in batches}
            self.records = [encoded[id(batch)] for batch in batches]
        else:
            self.append_baseline = "file write+fdatasync per batch"
            self.read_baseline = "sequential file read, 16 MiB"

    def vault_append(self, count: int, producers: int = 1) -> float:
        shutil.rmtree(self.root / "vault" / STREAM, ignore_errors=True)
        elapsed = vault_append(self.store, self.batches[:count], producers)
        self.messages = count * len(self.batches[0])
        return elapsed

    def base_append(self, count: int) -> float:
        if self.floor:
            return floor_append(self.raw, self.records[:count])
        return file_write(self.raw, [write.batch for write in self.writes[:count]])

    def vault_read(self) -> float:
        return vault_replay(self.store, self.messages)

    def base_read(self) -> float:
        length = self.stream_length()
        if self.floor:
            with open(self.log, "rb") as file:  # "pre-encoded bytes": reading them is not timed
                file.seek(fmt.DATA_START)
                data = file.read(length)
            return floor_read(data, self.messages)
        return file_read(self.log, fmt.DATA_START, length)


class AzuriteCase(Case):
    store_name = "Azurite"
    append_baseline = "Put Page, <= 4 MiB each"
    read_baseline = "ranged Get Blob, 16 MiB"

    def __init__(
        self, values: str, batches: list[list[vault_core.Message]], connection_string: str, container: str
    ) -> None:
        from azure.core.exceptions import ResourceExistsError
        from azure.storage.blob import BlobServiceClient

        super().__init__(values, batches)
        self.store = vault_core.open_store(connection_string, container=container)
        self.service = BlobServiceClient.from_connection_string(connection_string)
        self.container = self.service.get_container_client(container)
        with contextlib.suppress(ResourceExistsError):
            self.container.create_container()
        self.log = self.container.get_blob_client(f"{STREAM}/log")
        self.raw = self.container.get_blob_client("raw")

    def vault_append(self, count: int, producers: int = 1) -> float:
        _delete_blob(self.log)  # Azurite holds everything in memory: keep one copy
        elapsed = vault_append(self.store, self.batches[:count], producers)
        self.messages = count * len(self.batches[0])
        return elapsed

    def base_append(self, count: int) -> float:
        writes = self.writes[:count]
        _delete_blob(self.raw)
        last = writes[-1]
        self.raw.create_page_blob(last.offset + len(last.data))
        return put_pages(self.raw, writes)

    def vault_read(self) -> float:
        return vault_replay(self.store, self.messages)

    def base_read(self) -> float:
        length = self.stream_length()
        return get_ranges(self.log, fmt.DATA_START, length)

    def close(self) -> None:
        self.container.delete_container()
        self.store.close()
        self.service.close()


def _delete_blob(blob: BlobClient) -> None:
    from azure.core.exceptions import ResourceNotFoundError

    with contextlib.suppress(ResourceNotFoundError):
        blob.delete_blob()


def best_of(repeats: int, vault: Callable[[], float], base: Callable[[], float]) -> tuple[float, float]:
    """The best seconds of each side over `repeats` runs. The order alternates, so neither side
    always runs first on freshly freed disk blocks or a freshly collected emulator heap."""
    runs: list[list[float]] = [[], []]
    for repeat in range(repeats):
        sides = [(0, vault), (1, base)]
        for side, run in sides if repeat % 2 == 0 else reversed(sides):
            runs[side].append(run())
    if VERBOSE:
        print("    runs (s): vault", _seconds(runs[0]), "| baseline", _seconds(runs[1]), flush=True)
    return min(runs[0]), min(runs[1])


def _seconds(runs: list[float]) -> str:
    return " ".join(f"{seconds:.3f}" for seconds in runs)


# --- replay memory --------------------------------------------------------------------------

# Runs in a fresh interpreter that imports vault_core alone. "build" appends `count` batches of 64
# values of 64 KiB; "replay" replays the stream, dropping messages as they come, so its peak is
# the reader's own buffering plus the interpreter; "idle" opens the store and reads nothing. Each
# prints its message count, ru_maxrss and VmHWM (KiB).
_CHILD = """
import collections, itertools, random, resource, sys
import vault_core
root, stream, mode, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
store = vault_core.open_store(root)
counter = itertools.count()
if mode == "build":
    rng = random.Random(3)
    batch = [vault_core.Message(f"event-type-{i % 8:05d}", rng.randbytes(65536)) for i in range(64)]
    with store.writer(stream) as writer:
        for _ in range(count):
            writer.append(batch)
    counter = itertools.count(count * len(batch))
elif mode == "replay":
    with store.reader(stream) as reader:
        collections.deque(zip(reader.replay(), counter, strict=False), maxlen=0)
with open("/proc/self/status") as status:
    hwm = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
print(next(counter), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, hwm)
"""


class ChildMemory(NamedTuple):
    messages: int
    maxrss: int  # bytes; ru_maxrss
    own_peak: int  # bytes; VmHWM, the peak of this process's own address space


def run_child(root: Path, mode: str, count: int = 0) -> ChildMemory:
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(root), STREAM, mode, str(count)],
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    )
    messages, maxrss_kib, hwm_kib = result.stdout.split()
    return ChildMemory(int(messages), int(maxrss_kib) * 1024, int(hwm_kib) * 1024)


@dataclass
class MemoryFigure:
    nbytes: int
    replay: ChildMemory
    idle: ChildMemory

    @property
    def passed(self) -> bool:
        return self.replay.maxrss / MB < TARGET_REPLAY_PEAK_MB


def replay_memory(root: Path, mib: int) -> MemoryFigure:
    """Peak memory replaying a stream of `mib` MiB of 64 KiB values from the local store.

    On Linux, ru_maxrss counts the peak of the process that spawned the child too (exec keeps
    the larger of the two), so this runs first, while this process holds nothing big, and the
    stream is built in a child of its own. VmHWM, the child's own peak, is reported beside it."""
    count = batch_count(mib)
    run_child(root, "build", count)
    replay = run_child(root, "replay")
    _check_count("replay child", replay.messages, count * BIG_BATCH)
    with vault_core.open_store(root).reader(STREAM) as reader:
        nbytes = reader.position()
    return MemoryFigure(nbytes, replay, run_child(root, "idle"))


# --- report ---------------------------------------------------------------------------------


def throughput_table(rows: list[Row]) -> list[list[str]]:
    table = [
        [
            "values",
            "store",
            "op",
            "vault MB/s",
            "vault msg/s",
            "baseline",
            "base MB/s",
            "base msg/s",
            "ratio",
            "target",
            "",
        ]
    ]
    for row in rows:
        table.append(
            [
                row.values,
                row.store,
                row.op,
                f"{row.nbytes / row.vault_seconds / MB:,.1f}",
                f"{row.messages / row.vault_seconds:,.0f}",
                row.baseline,
                f"{row.nbytes / row.base_seconds / MB:,.1f}",
                f"{row.messages / row.base_seconds:,.0f}",
                f"{row.ratio:.2f}x",
                f">= {row.target:.1f}x",
                "PASS" if row.passed else "MISS",
            ]
        )
    return table


def memory_table(figure: MemoryFigure) -> list[list[str]]:
    return [
        ["replay (local)", "messages", "peak RSS", "own peak (VmHWM)", "idle interpreter", "target", ""],
        [
            f"{figure.nbytes / MB:,.0f} MB stream",
            f"{figure.replay.messages:,}",
            f"{figure.replay.maxrss / MB:.1f} MB",
            f"{figure.replay.own_peak / MB:.1f} MB",
            f"{figure.idle.maxrss / MB:.1f} MB",
            f"< {TARGET_REPLAY_PEAK_MB} MB",
            "PASS" if figure.passed else "MISS",
        ],
    ]


def describe(args: argparse.Namespace) -> str:
    return (
        f"Python {platform.python_version()} on {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} cores; best of {args.repeats} after one warm-up; MB = 10^6 bytes of the "
        f"stream (batch headers included); 64 KiB values: {args.big_local_mib} MiB local, "
        f"{args.big_azurite_mib} MiB Azurite; 100 B values: {args.small_local:,} messages local, "
        f"{args.small_azurite:,} Azurite"
    )


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and one repeat: a smoke run")
    parser.add_argument("--big-local-mib", type=int, help="MiB of 64 KiB values, local store (512)")
    parser.add_argument("--big-azurite-mib", type=int, help="MiB of 64 KiB values, Azurite (256)")
    parser.add_argument("--small-local", type=int, help="100-byte messages, local store (500,000)")
    parser.add_argument("--small-azurite", type=int, help="100-byte messages, Azurite (200,000)")
    parser.add_argument("--replay-mib", type=int, help="MiB of the stream replayed for peak memory (1024)")
    parser.add_argument("--repeats", type=int, help="timed runs per figure, the best kept (5)")
    parser.add_argument(
        "--producers",
        type=int,
        default=4,
        help="threads sharing one writer in the extra 100 B append row (4; 1 leaves it out)",
    )
    parser.add_argument("--verbose", action="store_true", help="print the seconds of every timed run")
    parser.add_argument("--markdown", metavar="FILE", type=Path, help="also write the tables to FILE")
    args = parser.parse_args(argv)
    for name, (full, quick) in SIZES.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def batch_count(mib: int) -> int:
    return max(1, round(mib / 4))


def main(argv: list[str] | None = None) -> int:
    global VERBOSE
    args = parse_args(argv)
    VERBOSE = args.verbose
    sys.path.insert(0, str(ROOT))  # for the test suite's Azurite launcher
    from tests.support.azurite import Azurite

    print(describe(args), flush=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="vault-bench-", dir="/tmp") as scratch:
        tmp = Path(scratch)
        print(f"... peak memory replaying {args.replay_mib} MiB, local store", flush=True)
        memory = replay_memory(tmp / "replay", args.replay_mib)
        shutil.rmtree(tmp / "replay")
        rows += run_cases(local_cases(args, tmp))
    # Azurite starts only now, so the local figures share the two cores with nothing else.
    azurite = Azurite()
    try:
        rows += run_cases(azurite_cases(args, azurite.connection_string))
    finally:
        azurite.stop()

    rows.sort(key=lambda row: (row.values != "64 KiB", row.store != "local"))
    throughput, peak = throughput_table(rows), memory_table(memory)
    print()
    print(as_text(throughput))
    print()
    print(as_text(peak))
    misses = sum(not row.passed for row in rows) + (not memory.passed)
    print(f"\n{misses} of {len(rows) + 1} targets missed")
    if args.markdown:
        args.markdown.write_text(
            f"{describe(args)}\n\n{as_markdown(throughput)}\n\n{as_markdown(peak)}\n", encoding="utf-8"
        )
    return 0


Cases = Iterator[tuple[str, Callable[[], list[Row]]]]


def run_cases(cases: Cases) -> list[Row]:
    """Each case is built only when it runs, so only one case's inputs are in memory at a time."""
    rows = []
    for step, run in cases:
        print(f"... {step}", flush=True)
        rows += run()
    return rows


def local_cases(args: argparse.Namespace, tmp: Path) -> Cases:
    def local(name: str, values: str, batches: list[list[vault_core.Message]], **options: Any) -> list[Row]:
        case = LocalCase(values, batches, tmp / name, floor=options["floor"])
        case.producers = options.get("producers", 1)
        try:
            return case.run(args.repeats, options["targets"])
        finally:
            shutil.rmtree(tmp / name)

    def big() -> list[Row]:
        batches = make_batches(batch_count(args.big_local_mib), BIG_BATCH, BIG_VALUE)
        return local(
            "big", "64 KiB", batches, floor=False, targets=(TARGET_BIG_APPEND, TARGET_BIG_READ_LOCAL)
        )

    def small() -> list[Row]:
        batches = make_batches(math.ceil(args.small_local / SMALL_BATCH), SMALL_BATCH, SMALL_VALUE)
        targets = (TARGET_SMALL_APPEND_LOCAL, TARGET_SMALL_READ_LOCAL)
        return local("small", "100 B", batches, floor=True, targets=targets, producers=args.producers)

    yield f"64 KiB values, local store, {args.big_local_mib} MiB", big
    yield f"100 B values, local store, {args.small_local:,} messages", small


def azurite_cases(args: argparse.Namespace, connection_string: str) -> Cases:
    def azurite(
        container: str,
        values: str,
        batches: list[list[vault_core.Message]],
        targets: tuple[float, float],
        producers: int = 1,
    ) -> list[Row]:
        case = AzuriteCase(values, batches, connection_string, container)
        case.producers = producers
        try:
            return case.run(args.repeats, targets)
        finally:
            case.close()

    def big() -> list[Row]:
        batches = make_batches(batch_count(args.big_azurite_mib), BIG_BATCH, BIG_VALUE)
        return azurite("bench-big", "64 KiB", batches, (TARGET_BIG_APPEND, TARGET_BIG_READ_AZURITE))

    def small() -> list[Row]:
        batches = make_batches(math.ceil(args.small_azurite / SMALL_BATCH), SMALL_BATCH, SMALL_VALUE)
        targets = (TARGET_SMALL_APPEND_AZURITE, TARGET_SMALL_READ_AZURITE)
        return azurite("bench-small", "100 B", batches, targets, args.producers)

    # The small case first: it is the most sensitive to per-request latency, and the emulator
    # is still collecting the garbage of the big case for a while after it.
    yield f"100 B values, Azurite, {args.small_azurite:,} messages", small
    yield f"64 KiB values, Azurite, {args.big_azurite_mib} MiB", big


if __name__ == "__main__":
    sys.exit(main())
