"""End-to-end ingest through `vault serve` on the local store, with JSON and with binary bodies,
by 1 and by 8 concurrent producers, each figure beside the direct writer measured in the same run.

    /tmp/v/bin/python bench/bench_http.py                  # the full run, about a minute
    /tmp/v/bin/python bench/bench_http.py --quick          # a smoke run, under 10 s
    /tmp/v/bin/python bench/bench_http.py --markdown out.md

docs/performance.md ("HTTP ingest") explains what is measured and how to read it. The server is a
real `vault serve` subprocess on a free loopback port (tests/support/served.py); scratch data lives
in a temporary directory under /tmp. The binary single-producer path is also taken apart: its CPU
per batch, client and server, on the fresh server and after the timed runs; then a profile of the
client (cProfile) and of the server (py-spy, when installed: `pip install py-spy`).
Nothing is written into the repository unless --markdown FILE is given.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import platform
import pstats
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import urllib3
from report import as_markdown, as_text

import vault_core
from vault_core import format as fmt
from vault_core import http_models as http
from vault_core import transfer
from vault_core.client import VaultClient

ROOT = Path(__file__).resolve().parent.parent
MB = 1_000_000  # figures are in decimal megabytes

KEY_BYTES, VALUE_BYTES, BATCH = 16, 100, 1000
DISTINCT_BATCHES = 4  # batches are cycled from a few distinct ones, so inputs take little memory
DISTINCT_KEYS = 8  # keys are contract names: few distinct ones, as in real streams
PRODUCERS = (1, 8)
WARMUP_BATCHES = 8  # the untimed warm-up round, per path
THREAD_TIMEOUT = 300  # seconds any one run may take before the benchmark gives up
SPY_RATE = 400  # py-spy samples per second
HOP_ROUNDS = 3  # rounds of the HTTP hop alone (and of the direct writer beside it), the best kept

# The target: the least acceptable ratio of the binary HTTP path's throughput to the direct
# writer's with the same number of producers. JSON has no target: it is the convenient path.
TARGET_BINARY = 0.5

SIZES = {
    # name: (full, quick)
    "batches": (300, 40),  # 1,000-message batches per timed run
    "repeats": (5, 1),
    "profile_batches": (300, 40),
}


# --- inputs ---------------------------------------------------------------------------------


def make_batches(count: int, seed: int = 1) -> list[list[vault_core.Message]]:
    """`count` batches of BATCH messages, cycled from a few distinct ones of random values."""
    rng = random.Random(seed)
    keys = [f"event-type-{i:05d}" for i in range(DISTINCT_KEYS)]
    assert all(len(k) == KEY_BYTES for k in keys)
    distinct = [
        [vault_core.Message(keys[i % DISTINCT_KEYS], rng.randbytes(VALUE_BYTES)) for i in range(BATCH)]
        for _ in range(min(count, DISTINCT_BATCHES))
    ]
    return [distinct[i % len(distinct)] for i in range(count)]


def new_batch_id() -> str:
    """What VaultClient.publish generates when no Idempotency-Key is given."""
    return uuid.uuid4().hex


def stream_bytes(batches: Sequence[Sequence[vault_core.Message]]) -> int:
    """The stream bytes these batches take, each with a client-generated batch id."""
    return sum(len(fmt.prepare_batch(b, new_batch_id().encode()).buffer) for b in batches)


# --- the driver: producers in threads, started together -------------------------------------

Publish = Callable[[Sequence[vault_core.Message]], int]  # appends one batch, returns the position


def drive(
    producers: int, publishers: Sequence[Publish], batches: Sequence[Sequence[vault_core.Message]]
) -> tuple[float, int]:
    """Producer i publishes batches[i::producers] one after another with publishers[i]. Each
    first publishes one untimed warm-up batch (opening the stream and its connection); the clock
    runs from the moment all are ready until the last batch is acknowledged. Returns the seconds
    and the stream bytes appended by the timed batches."""
    barrier = threading.Barrier(producers + 1, timeout=THREAD_TIMEOUT)
    warm_end = [0] * producers
    last = [0] * producers
    errors: list[BaseException] = []

    def producer(index: int) -> None:
        publish = publishers[index]
        try:
            warm_end[index] = publish(batches[index])
            barrier.wait()
            for messages in batches[index::producers]:
                last[index] = publish(messages)
        except BaseException as error:  # reported by the caller
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=producer, args=(i,), daemon=True) for i in range(producers)]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):  # a producer failed: reported below
        barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join(THREAD_TIMEOUT)
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"a producer failed: {errors[0]!r}") from errors[0]
    if any(thread.is_alive() for thread in threads):
        raise RuntimeError(f"producers still running after {THREAD_TIMEOUT} s")
    return elapsed, max(last) - max(warm_end)


# --- the paths ------------------------------------------------------------------------------


@dataclass
class Figure:
    path: str  # "direct", "JSON" or "binary"
    producers: int
    seconds: float
    nbytes: int  # stream bytes appended
    messages: int

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


class Bench:
    """The direct writer on a local store in this process, and `vault serve` on another local
    store in a subprocess, each run on a fresh stream."""

    def __init__(self, scratch: Path, batches: list[list[vault_core.Message]]) -> None:
        from tests.support.served import Served  # the test suite's launcher (ROOT is on sys.path)

        self.batches = batches
        self.direct = vault_core.open_store(scratch / "direct")
        self.direct_root = scratch / "direct"
        self.served = Served(str(scratch / "served"), "vault")
        self.clients: dict[tuple[bool, int], list[VaultClient]] = {}
        self.runs = 0

    def stream(self, path: str, producers: int) -> str:
        self.runs += 1
        return f"{path.lower()}-x{producers}-{self.runs}"

    def run(self, path: str, producers: int, count: int) -> Figure:
        batches = self.batches[:count]
        stream = self.stream(path, producers)
        if path == "direct":
            with self.direct.writer(stream) as writer:  # opening (lock) is not timed

                def append(messages: Sequence[vault_core.Message]) -> int:
                    return writer.append(messages, batch_id=new_batch_id()).position

                seconds, nbytes = drive(producers, [append] * producers, batches)
            shutil.rmtree(self.direct_root / stream)
        else:
            publishers = [
                _publisher(client, stream) for client in self.client_pool(path == "binary", producers)
            ]
            seconds, nbytes = drive(producers, publishers, batches)
        return Figure(path, producers, seconds, nbytes, count * BATCH)

    def client_pool(self, binary: bool, producers: int) -> list[VaultClient]:
        """One client per producer, kept across runs (so their connections stay open)."""
        key = (binary, producers)
        if key not in self.clients:
            self.clients[key] = [VaultClient(self.served.url, binary=binary) for _ in range(producers)]
        return self.clients[key]

    def close(self) -> None:
        for clients in self.clients.values():
            for client in clients:
                client.close()
        self.served.stop()


def _publisher(client: VaultClient, stream: str) -> Publish:
    def publish(messages: Sequence[vault_core.Message]) -> int:
        return client.publish(stream, messages).position

    return publish


PATHS = [(path, producers) for producers in PRODUCERS for path in ("direct", "JSON", "binary")]


def warm_up(bench: Bench) -> None:
    """One untimed run of every path."""
    for path, producers in PATHS:
        bench.run(path, producers, min(WARMUP_BATCHES * producers, len(bench.batches)))


def measure(bench: Bench, args: argparse.Namespace, expected_bytes: int) -> dict[tuple[str, int], Figure]:
    """`repeats` rounds over every path (the order reversed every other round); the best run of
    each path is kept."""
    best: dict[tuple[str, int], Figure] = {}
    for repeat in range(args.repeats):
        order = PATHS if repeat % 2 == 0 else PATHS[::-1]
        for path, producers in order:
            figure = bench.run(path, producers, args.batches)
            if figure.nbytes != expected_bytes:
                raise RuntimeError(
                    f"{path} x{producers} appended {figure.nbytes} bytes, not {expected_bytes}"
                )
            if args.verbose:
                print(f"    {path:<6} x{producers}: {figure.seconds:.3f} s", flush=True)
            key = (path, producers)
            if key not in best or figure.seconds < best[key].seconds:
                best[key] = figure
    return best


# --- where the time goes: the binary single-producer path ----------------------------------


def account(bench: Bench, count: int, when: str) -> list[str]:
    """CPU accounting of an unprofiled run: wall time, this thread's CPU (the client) and the
    server process's CPU (from /proc), per batch, beside the direct writer's wall time, and the
    server's resident memory after it."""
    client = VaultClient(bench.served.url, binary=True)
    stream = bench.stream("account", 1)
    batches = bench.batches[:count]
    try:
        client.publish(stream, batches[0])
        server_before = _process_cpu(bench.served.process.pid)
        cpu_before, start = time.thread_time(), time.perf_counter()
        for messages in batches:
            client.publish(stream, messages)
        wall, cpu = time.perf_counter() - start, time.thread_time() - cpu_before
        server_user, server_system = (
            after - before
            for after, before in zip(_process_cpu(bench.served.process.pid), server_before, strict=True)
        )
    finally:
        client.close()
    direct = bench.run("direct", 1, count)
    ms = 1000 / count
    return [
        f"{when}, unprofiled, {count} batches: {wall * ms:.2f} ms/batch of wall time (the direct "
        f"writer: {direct.seconds * ms:.2f}); client CPU {cpu * ms:.2f}; server CPU "
        f"{(server_user + server_system) * ms:.2f} (user {server_user * ms:.2f}, system "
        f"{server_system * ms:.2f}); server RSS then {server_rss(bench)}"
    ]


async def bare_app(scope: dict, receive: Callable, send: Callable) -> None:
    """An ASGI app that reads a POST's body and answers the JSON of an append of BATCH messages,
    doing nothing else: `vault serve`'s HTTP hop without the service (see `http_hop`)."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    offsets = list(range(1 << 30, (1 << 30) + BATCH * 136, 136))
    body = f'{{"stream":"bare","position":{1 << 31},"offsets":{offsets}}}'.replace(" ", "").encode()
    headers = [(b"content-type", http.JSON.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def http_hop(bench: Bench, count: int) -> list[str]:
    """The HTTP hop alone: the same binary bodies posted with urllib3 (VaultClient's library) to
    `bare_app` on uvicorn (vault serve's server), the answer parsed as VaultClient does. With the
    direct writer's time it bounds what any Python service on this hop can reach."""
    from tests.support.azurite import free_port, stop_process

    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(Path(__file__).parent),
            "bench_http:bare_app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
    )
    pool = urllib3.PoolManager()
    url = f"http://127.0.0.1:{port}/api/streams/bare"
    bodies = [transfer.encode_binary(messages) for messages in bench.batches[:count]]
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                pool.request("POST", url, body=bodies[0])
                break
            except urllib3.exceptions.HTTPError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("uvicorn did not start") from None
                time.sleep(0.1)
        hop = float("inf")
        for _ in range(HOP_ROUNDS):  # the first round also warms the connection and the server
            start = time.perf_counter()
            for body in bodies:
                headers = {"content-type": http.BINARY_BATCH, http.IDEMPOTENCY_KEY: uuid.uuid4().hex}
                json.loads(pool.request("POST", url, body=body, headers=headers).data)
            hop = min(hop, (time.perf_counter() - start) / count)
    finally:
        pool.clear()
        stop_process(server)
    direct = min(bench.run("direct", 1, count).seconds for _ in range(HOP_ROUNDS)) / count
    return [
        f"the HTTP hop alone (the same bodies to a bare ASGI app on uvicorn, urllib3, the answer "
        f"parsed): {hop * 1000:.2f} ms/batch; with the direct writer's {direct * 1000:.2f} ms/batch "
        f"behind it, 1 producer could reach at most {direct / (direct + hop):.2f}x"
    ]


def _process_cpu(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def server_rss(bench: Bench) -> str:
    for line in Path(f"/proc/{bench.served.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return f"{int(line.split()[1]) * 1024 / MB:.0f} MB"  # the kernel counts KiB
    return "unknown"


def profile_client(bench: Bench, count: int) -> list[str]:
    """cProfile of this thread while one binary client publishes `count` batches."""
    client = VaultClient(bench.served.url, binary=True)
    stream = bench.stream("profile-client", 1)
    batches = bench.batches[:count]
    try:
        client.publish(stream, batches[0])
        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.enable()
        for messages in batches:
            client.publish(stream, messages)
        profiler.disable()
        wall = time.perf_counter() - start
    finally:
        client.close()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    ms = 1000 / count  # seconds in all -> ms per batch

    def total(pattern: str, column: int) -> float:
        """Seconds in the functions whose "file:line(name)" matches: column 2 own, 3 inclusive."""
        return sum(row[column] for key, row in stats.items() if re.search(pattern, _label(key)))

    lines = [
        f"client, cProfile of the producer thread ({count} batches, {wall * ms:.2f} ms/batch "
        "under the profiler, which inflates Python calls):",
        "  inclusive, ms per batch:",
    ]
    for name, pattern, column in CLIENT_PARTS:
        lines.append(f"    {total(pattern, column) * ms:6.3f}  {name}")
    lines.append("  hottest functions by own time, ms per batch:")
    ranked = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)
    for key, row in ranked[:10]:
        lines.append(f"    {row[2] * ms:6.3f}  {_label(key)}")
    return lines


CLIENT_PARTS = [
    # (what, regex on "file:line(function)", 3 = inclusive time, 2 = own time)
    ("VaultClient.publish, all of it", r"vault_core/client\.py:\d+\(publish\)", 3),
    ("  transfer.encode_binary", r"transfer\.py:\d+\(encode_binary\)", 3),
    ("  uuid4, check_stream_name, check_idempotency_key", r"\((uuid4|check_\w+)\)", 3),
    ("  VaultClient._send (urllib3)", r"vault_core/client\.py:\d+\(_send\)", 3),
    ("    socket recv: waiting for the server's answer", r"method 'recv(_into)?' of '_socket", 2),
    ("    socket send", r"method 'send(all)?' of '_socket", 2),
    ("  json.loads (the answer's offsets)", r"json/__init__\.py:\d+\(loads\)", 3),
]


def _label(key: tuple[str, int, str]) -> str:
    filename, line, name = key
    if filename == "~":
        return name
    parts = Path(filename).parts
    for anchor in ("site-packages", "vault_core", "lib"):
        if anchor in parts:
            at = parts.index(anchor)
            filename = "/".join(parts[at + (anchor != "vault_core") :])
            break
    return f"{filename}:{line}({name})"


def find_py_spy() -> str | None:
    return shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")


def profile_server(bench: Bench, count: int, py_spy: str, scratch: Path) -> list[str]:
    """py-spy samples of whichever server thread holds the GIL (`--gil`: the server's Python
    work; waits, the kernel and fdatasync are left out) while one binary client publishes
    `count` batches. Shares of the samples: sampling slows the server, so its figures in ms
    would not be the unprofiled ones."""
    client = VaultClient(bench.served.url, binary=True)
    stream = bench.stream("profile-server", 1)
    raw, log = scratch / "py-spy.txt", scratch / "py-spy.log"
    batches = bench.batches[:count]
    try:
        client.publish(stream, batches[0])
        with open(log, "w") as out:
            command = [py_spy, "record", "--pid", str(bench.served.process.pid), "--rate", str(SPY_RATE)]
            command += ["--gil", "--format", "raw", "--output", str(raw)]
            spy = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            if not _attached(spy, log):
                return [f"server: py-spy did not attach ({log.read_text().strip()[:300]})"]
            for messages in batches:
                client.publish(stream, messages)
            spy.send_signal(signal.SIGINT)  # py-spy writes its samples out when interrupted
            spy.wait(60)
        finally:
            if spy.poll() is None:
                spy.kill()
                spy.wait()
    finally:
        client.close()
    if not raw.exists():
        return ["server: py-spy wrote no samples"]
    stacks = []
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        stacks.append((stack.split(";"), int(samples)))
    total = sum(n for _, n in stacks) or 1
    lines = [
        f"server, py-spy --gil ({count} batches, {total:,} samples of the thread holding the GIL):",
        "  inclusive, share of the samples:",
    ]
    for name, pattern in SERVER_PARTS:
        inside = sum(n for frames, n in stacks if any(re.search(pattern, frame) for frame in frames))
        lines.append(f"    {inside / total:6.1%}  {name}")
    own: Counter[str] = Counter()
    for frames, n in stacks:
        leaf = frames[-1]
        if "(<" in leaf and len(frames) > 1:  # generated code (a namedtuple's __new__): say who called
            leaf = f"{leaf} <- {frames[-2]}"
        own[re.sub(r"[^ (]*site-packages/", "", leaf)] += n
    lines.append("  hottest lines by own samples:")
    for leaf, n in own.most_common(12):
        lines.append(f"    {n / total:6.1%}  {leaf}")
    return lines


def _attached(spy: subprocess.Popen[bytes], log: Path) -> bool:
    """Whether py-spy says it is sampling, within 15 seconds."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and spy.poll() is None:
        if "Sampling" in log.read_text():
            return True
        time.sleep(0.05)
    return False


SERVER_PARTS = [
    # (what, regex on one py-spy frame "function (file:line)")
    ("event loop: HTTP/1.1 in (uvicorn: httptools or h11)", r"^(HttpTools|H11)Protocol\.data_received "),
    ("event loop: the ASGI app (publish path; Starlette for the rest)", r"^RequestResponseCycle\.run_asgi "),
    ("  publish handler (vault_core/server.py)", r"^create_app\.<locals>\.publish "),
    ("    http_models.prepare_body (the body to records)", r"^prepare_body \(vault_core"),
    ("  the answer out (JSON of the offsets, uvicorn)", r"^_answer "),
    ("event loop: to_thread hand-off, wake-ups", r"^(to_thread|_chain_future|\w+Loop\._read_from_self) "),
    ("worker thread: Writers.append", r"^Writers\.append "),
    ("  fmt.prepare_batch (validate, encode)", r"^prepare_batch "),
    ("  fmt.seal_batch (CRC32C)", r"^seal_batch "),
    ("  LocalLog.write + commit (pwritev, fdatasync)", r"^LocalLog\.(write|commit) "),
]


# --- report ---------------------------------------------------------------------------------


def table(best: dict[tuple[str, int], Figure]) -> list[list[str]]:
    rows = [["path", "producers", "messages/s", "MB/s", "vs direct", "target", ""]]
    names = {
        "direct": "direct: StreamWriter.append",
        "JSON": "vault serve, JSON bodies",
        "binary": "vault serve, binary bodies",
    }
    for path, producers in PATHS:
        figure, direct = best[(path, producers)], best[("direct", producers)]
        ratio = figure.rate / direct.rate
        target = f">= {TARGET_BINARY:.1f}x" if path == "binary" else ""
        verdict = ("PASS" if ratio >= TARGET_BINARY else "MISS") if path == "binary" else ""
        rows.append(
            [
                names[path],
                str(producers),
                f"{figure.rate:,.0f}",
                f"{figure.nbytes / figure.seconds / MB:,.1f}",
                f"{ratio:.2f}x",
                target,
                verdict,
            ]
        )
    return rows


def describe(args: argparse.Namespace, batches: list[list[vault_core.Message]]) -> str:
    json_body = len(http.encode_json(batches[0]))
    binary_body = len(transfer.encode_binary(batches[0]))
    return (
        f"Python {platform.python_version()} on {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} cores; {args.batches} batches of {BATCH:,} messages ({KEY_BYTES}-byte keys, "
        f"{VALUE_BYTES}-byte values) per run, best of {args.repeats} after a warm-up; request bodies "
        f"{json_body / 1000:.0f} kB JSON, {binary_body / 1000:.0f} kB binary; MB = 10^6 stream bytes"
    )


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and one repeat: a smoke run")
    parser.add_argument("--batches", type=int, help="1,000-message batches per timed run (300)")
    parser.add_argument("--repeats", type=int, help="timed runs per path, the best kept (5)")
    parser.add_argument("--profile-batches", type=int, help="batches in each profiled run (300)")
    parser.add_argument("--no-profile", action="store_true", help="skip the CPU breakdown and the profiles")
    parser.add_argument("--verbose", action="store_true", help="print the seconds of every timed run")
    parser.add_argument("--markdown", metavar="FILE", type=Path, help="also write the results to FILE")
    args = parser.parse_args(argv)
    for name, (full, quick) in SIZES.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.batches < max(PRODUCERS):
        parser.error(f"--batches must be at least {max(PRODUCERS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))  # for the test suite's `vault serve` launcher
    batches = make_batches(max(args.batches, args.profile_batches, WARMUP_BATCHES * max(PRODUCERS)))
    expected_bytes = stream_bytes(batches[: args.batches])
    print(describe(args, batches), flush=True)
    profile: list[str] = []
    with tempfile.TemporaryDirectory(prefix="vault-bench-http-", dir="/tmp") as scratch:
        bench = Bench(Path(scratch), batches)
        try:
            warm_up(bench)
            if not args.no_profile:
                print("... binary bodies, 1 producer, on the fresh server", flush=True)
                profile += account(bench, args.profile_batches, "fresh server")
            print("... timed runs", flush=True)
            best = measure(bench, args, expected_bytes)
            if not args.no_profile:
                print("... where the time goes: binary bodies, 1 producer", flush=True)
                profile += account(bench, args.profile_batches, "after the timed runs")
                profile += http_hop(bench, args.profile_batches)
                profile += profile_client(bench, args.profile_batches)
                py_spy = find_py_spy()
                if py_spy is None:
                    profile.append("server: not profiled (py-spy is not installed: pip install py-spy)")
                else:
                    profile += profile_server(bench, args.profile_batches, py_spy, Path(scratch))
        finally:
            bench.close()
    rows = table(best)
    print()
    print(as_text(rows))
    misses = sum(row[-1] == "MISS" for row in rows)
    print(f"\n{misses} of {len(PRODUCERS)} targets missed")
    if profile:
        print()
        print("\n".join(profile))
    if args.markdown:
        text = f"{describe(args, batches)}\n\n{as_markdown(rows)}\n"
        if profile:
            text += "\n```\n" + "\n".join(profile) + "\n```\n"
        args.markdown.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
