"""The Function App under the Durable host stand-in (tests/support/durable), run by Microsoft's
Python worker library on Python 3.13, beside `vault serve` on the same storage (Azurite) in the same
run: appends per second on one stream and the latency of one append by 1, 8 and 64 concurrent
producers of 1-message and 1,000-message batches; how many operations the stream's entity gets
per invocation and how large its saved state is; the storage operations each committed append
costs (the task hub's queues, tables and blobs, and the vault's own requests, counted on the wire
by a proxy in front of Azurite); the first append after idle (cold starts); and how long the
stream takes to accept appends again after its owner dies or its partition moves.

    .venv-functions/bin/python bench/bench_function_app.py            # the full run, about 9 minutes
    .venv-functions/bin/python bench/bench_function_app.py --quick    # a smoke run, about 3 minutes
    .venv-functions/bin/python bench/bench_function_app.py --markdown out.md

docs/performance.md ("The Function App") explains what is measured and how to read it. The
producers run in a process of their own (VaultClient over HTTP, each publishing one batch after
another with its own Idempotency-Keys), so their CPU does not compete with the host stand-in's
threads for one interpreter. Nothing is written into the repository unless --markdown is given.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from report import as_markdown, as_text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the test suite's Azurite, `vault serve` and Durable host stand-in

from tests.support.azurite import Azurite  # noqa: E402
from tests.support.durable import protocol  # noqa: E402
from tests.support.durable.host import DurableHost  # noqa: E402
from tests.support.durable.settings import scaled  # noqa: E402
from tests.support.served import Served  # noqa: E402
from tests.support.storage_proxy import StorageProxy  # noqa: E402
from vault_core import Message  # noqa: E402
from vault_core.client import VaultClient  # noqa: E402

PRODUCERS = (1, 8, 64)
BATCH_SIZES = (1, 1000)
VALUE_BYTES = 100
TARGET_MESSAGES_PER_INVOCATION = 10  # with 64 single-message producers on one stream
TARGET_TAKEOVER_SECONDS = 2.0
TARGET_STATE_BYTES = 64 * 1024  # the entity's saved state, at 64 producers over a sustained run
SCALE = 0.1  # the stand-in's partition lease (30 s on Azure), visibility and drain times, scaled


# --- producers, in a process of their own -------------------------------------------------------


def produce(
    url: str, stream: str, producers: int, size: int, seconds: float, results: multiprocessing.Queue
) -> None:
    """`producers` threads publish `size`-message batches to `stream` one after another for
    `seconds` (after one untimed warm-up batch each); puts (appends, messages, seconds, each
    timed append's latency, errors)."""
    counts = [0] * producers
    latencies: list[float] = []
    errors: list[str] = []
    barrier = threading.Barrier(producers + 1)
    stop = threading.Event()

    def run(index: int) -> None:
        value = bytes(VALUE_BYTES)
        messages = [Message(f"event-{index:03d}-{i % 8}", value) for i in range(size)]
        with VaultClient(url, timeout=300, attempts=30) as client:
            try:
                client.publish(stream, messages)
            except Exception as error:  # reported by the caller
                errors.append(repr(error))
            barrier.wait()
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    client.publish(stream, messages, idempotency_key=uuid.uuid4().hex)
                    counts[index] += 1
                    latencies.append(time.perf_counter() - started)
                except Exception as error:
                    errors.append(repr(error))
                    return

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(producers)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(300)
    elapsed = time.perf_counter() - start  # the calls in flight at the end count, and their time
    results.put((sum(counts), sum(counts) * size, elapsed, latencies, errors))


def measure(
    url: str, stream: str, producers: int, size: int, seconds: float
) -> tuple[int, int, float, list[float]]:
    results: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()
    process = multiprocessing.get_context("spawn").Process(
        target=produce, args=(url, stream, producers, size, seconds, results)
    )
    process.start()
    appends, messages, elapsed, latencies, errors = results.get(timeout=seconds + 600)
    process.join()
    if errors:
        raise RuntimeError(f"{len(errors)} producer calls failed, first: {errors[0]}")
    return appends, messages, elapsed, latencies


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


@dataclass
class Figure:
    target: str
    producers: int
    size: int
    appends: int
    messages: int
    seconds: float
    latencies: list[float]
    per_invocation: float | None = None
    host_cpu: float | None = None  # CPU seconds of the host stand-in's own threads (this process)
    state_bytes: list[int] | None = None  # the entity's saved state at each checkpoint
    hub_operations: int | None = None  # the task hub's queue, table and blob operations
    storage_requests: int = 0  # the vault's own requests to storage (the proxy's count)
    state_blobs: int = 0  # checkpoints whose state went to a blob (over the table's 60 KiB)

    @property
    def appends_per_second(self) -> float:
        return self.appends / self.seconds

    @property
    def messages_per_second(self) -> float:
        return self.messages / self.seconds


# --- failover -------------------------------------------------------------------------------


class Prober:
    """A fresh append every 100 ms, each waiting on its own thread; remembers when each committed."""

    def __init__(self, url: str, stream: str) -> None:
        self.url, self.stream = url, stream
        self.commits: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.1):
            threading.Thread(target=self._one, daemon=True).start()

    def _one(self) -> None:
        with VaultClient(self.url, timeout=300, attempts=100) as client:
            try:
                client.publish(self.stream, [Message("probe", b"")])
            except Exception:
                return
            self.commits.append(time.monotonic())

    def first_commit_after(self, moment: float, limit: float = 300) -> float:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            later = [t for t in self.commits if t > moment]
            if later:
                return min(later)
            time.sleep(0.01)
        raise RuntimeError(f"no append committed within {limit} s")


def failover(host: DurableHost, stream: str, kind: str) -> tuple[float, float]:
    """The owner of the stream's entity dies ("kill") or hands its partition to another instance
    ("move") while appends keep coming. Returns (seconds until the partition was claimed by the
    new owner, seconds from that claim until the first append committed after it)."""
    with VaultClient(host.url) as client:
        client.publish(stream, [Message("warm", b"")])  # the owner holds the stream's lease
    entity = protocol.entity_instance_id("stream_writer", stream)
    partition = protocol.partition_of(entity, host.settings.partition_count)
    old = host.owner_of(entity)
    assert old is not None
    prober = Prober(host.url, stream)
    try:
        time.sleep(1)
        claims = len(host.claims)
        started = time.monotonic()
        if kind == "kill":
            host.kill(old, replace=False)
        else:
            host.move_partition(partition, next(i for i in host.live() if i is not old))
        deadline = time.monotonic() + 300
        while not any(p == partition and who != old.name for _, p, who in host.claims[claims:]):
            if time.monotonic() > deadline:
                raise RuntimeError("the partition was never claimed")
            time.sleep(0.01)
        claimed = next(t for t, p, who in host.claims[claims:] if p == partition and who != old.name)
        first = prober.first_commit_after(claimed)
    finally:
        prober.stop.set()
    if kind == "kill":
        host.add_instance()
    host.settle()
    return claimed - started, first - claimed


# --- the run ---------------------------------------------------------------------------------


@dataclass
class Idle:
    """What the app costs and does when nobody writes, and the first append after idle."""

    hub_operations_per_second: float
    worker_start_seconds: list[float]
    first_append_http_cold: float
    first_append_both_cold: float
    steady_append: float


def one_append(url: str, stream: str) -> float:
    started = time.perf_counter()
    with VaultClient(url, timeout=300, attempts=30) as client:
        client.publish(stream, [Message("after-idle", b"")])
    return time.perf_counter() - started


def idle_figures(host: DurableHost) -> Idle:
    operations = sum(host.hub.operations.values())
    time.sleep(5)
    per_second = (sum(host.hub.operations.values()) - operations) / 5
    steady = statistics.median(one_append(host.url, "idle") for _ in range(5))
    host.scale_to_zero("http")
    http_cold = one_append(host.url, "idle")
    host.scale_to_zero("http")
    host.scale_to_zero("durable")
    both_cold = one_append(host.url, "idle")
    while len(host.live()) < 2:  # back to the run's two Durable instances
        host.add_instance()
    host.settle()
    return Idle(per_second, list(host.cold_starts), http_cold, both_cold, steady)


def run(
    args: argparse.Namespace,
) -> tuple[list[Figure], dict[str, list[tuple[float, float]]], Idle, dict[str, str]]:
    figures: list[Figure] = []
    failovers: dict[str, list[tuple[float, float]]] = {"move": [], "kill": []}
    deployed = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    azurite = Azurite()
    try:
        with StorageProxy(azurite.port) as proxy:
            connection = proxy.connection_string(azurite)
            settings = {
                "AzureWebJobsStorage": connection,
                "VAULT_STORE": connection,
                "VAULT_CONTAINER": "bench",
                "VAULT_STAGING_CONTAINER": "bench-staging",
                "VAULT_TASK_HUB": "bench",
                "FUNCTIONS_REQUEST_BODY_SIZE_LIMIT": deployed["FUNCTIONS_REQUEST_BODY_SIZE_LIMIT"],
            }
            served = Served(connection, "bench-serve")
            try:
                with DurableHost(settings, instances=2, settings=scaled(SCALE)) as host:
                    host.settle()
                    modeled = {
                        "Durable's storage round trip": f"{host.settings.storage_latency * 1000:.0f} ms",
                        "maxQueuePollingInterval": f"{host.settings.max_polling_interval:g} s",
                        "partitions": str(host.settings.partition_count),
                        "maxEntityOperationBatchSize": str(host.settings.max_entity_batch),
                        "HTTP perInstanceConcurrency": str(host.settings.http_concurrency),
                        "partition lease (30 s on Azure)": f"{host.settings.lease_interval:g} s",
                        "instances": "2 Durable and 1 HTTP to start with, each a worker process",
                    }
                    for size in BATCH_SIZES:
                        for producers in PRODUCERS:
                            for target, url in (("Function App", host.url), ("vault serve", served.url)):
                                figures.append(one_run(host, proxy, target, url, producers, size, args))
                    idle = idle_figures(host)
                    for attempt in range(args.failovers):
                        for kind in ("move", "kill"):
                            result = failover(host, f"failover-{kind}-{attempt}", kind)
                            failovers[kind].append(result)
                            claimed, committed = result
                            print(
                                f"  {kind}: claimed after {claimed:.2f} s, committed {committed:.2f} s later"
                            )
                # The same 64 single-message producers with the extension's default reorder window
                # (30 minutes): what the entity's saved state was before host.json turned it off.
                default = scaled(SCALE, reorder_window_minutes=30)
                with DurableHost(settings, instances=2, settings=default) as host:
                    host.settle()
                    sorted_run = one_run(host, proxy, "Function App", host.url, 64, 1, args, "sorted")
                    sorted_run.target = "Function App, reorder window 30 min"
                    sorted_run.state_blobs = host.hub.operations["blob put"]
                    figures.append(sorted_run)
            finally:
                served.stop()
    finally:
        azurite.stop()
    return figures, failovers, idle, modeled


def one_run(
    host: DurableHost,
    proxy: StorageProxy,
    target: str,
    url: str,
    producers: int,
    size: int,
    args: argparse.Namespace,
    name: str = "",
) -> Figure:
    stream = f"s{size}-x{producers}-{name or target.split()[0].lower()}"
    entity = protocol.entity_instance_id("stream_writer", stream)
    sizes_before, cpu_before = len(host.batch_sizes), time.process_time()
    operations_before, requests_before = sum(host.hub.operations.values()), proxy.total()
    states_before = len(host.hub.entity_states.get(entity, []))
    appends, messages, seconds, latencies = measure(url, stream, producers, size, args.seconds)
    figure = Figure(target, producers, size, appends, messages, seconds, latencies)
    figure.storage_requests = proxy.total() - requests_before
    if target == "Function App":
        sizes = host.batch_sizes[sizes_before:]
        figure.per_invocation = sum(sizes) / len(sizes) if sizes else None
        figure.host_cpu = time.process_time() - cpu_before
        figure.state_bytes = host.hub.entity_states.get(entity, [])[states_before:]
        figure.hub_operations = sum(host.hub.operations.values()) - operations_before
    print(
        f"  {target:<12} x{producers:<2} {size:>4}-message batches: "
        f"{figure.appends_per_second:8.1f} appends/s, p50 {percentile(latencies, 0.5) * 1000:.0f} ms",
        flush=True,
    )
    return figure


def tables(
    figures: list[Figure], failovers: dict[str, list[tuple[float, float]]], idle: Idle
) -> list[list[list[str]]]:
    by = {(f.target, f.producers, f.size): f for f in figures}
    sorted_run = next((f for f in figures if f.target.startswith("Function App, reorder")), None)

    def ms(values: list[float], fraction: float) -> str:
        return f"{percentile(values, fraction) * 1000:,.0f}"

    throughput = [
        [
            "batch",
            "producers",
            "Function App appends/s",
            "p50 / p99 ms",
            "vault serve appends/s",
            "p50 / p99 ms",
            "ratio",
            "ops per entity invocation",
            "stand-in CPU",
        ]
    ]
    cost = [
        [
            "batch",
            "producers",
            "task hub operations per append",
            "vault requests per append",
            "vault serve requests per append",
            "entity state per checkpoint (median / max bytes)",
        ]
    ]
    for size in BATCH_SIZES:
        for producers in PRODUCERS:
            app, serve = by[("Function App", producers, size)], by[("vault serve", producers, size)]
            per = app.per_invocation
            verdict = ""
            if size == 1 and producers == 64 and per is not None:
                verdict = " (target 10: " + ("met" if per >= TARGET_MESSAGES_PER_INVOCATION else "MISS") + ")"
            throughput.append(
                [
                    f"{size:,} msg",
                    str(producers),
                    f"{app.appends_per_second:,.1f}",
                    f"{ms(app.latencies, 0.5)} / {ms(app.latencies, 0.99)}",
                    f"{serve.appends_per_second:,.1f}",
                    f"{ms(serve.latencies, 0.5)} / {ms(serve.latencies, 0.99)}",
                    f"{app.appends_per_second / serve.appends_per_second:.2f}",
                    ("-" if per is None else f"{per:.1f}") + verdict,
                    f"{app.host_cpu / app.seconds:.0%} of a core" if app.host_cpu is not None else "-",
                ]
            )
            states = app.state_bytes or [0]
            state_verdict = ""
            if producers == 64:
                state_verdict = (
                    " (target < 64 KiB: " + ("met" if max(states) < TARGET_STATE_BYTES else "MISS") + ")"
                )
            cost.append(
                [
                    f"{size:,} msg",
                    str(producers),
                    f"{(app.hub_operations or 0) / max(app.appends, 1):.1f}",
                    f"{app.storage_requests / max(app.appends, 1):.2f}",
                    f"{serve.storage_requests / max(serve.appends, 1):.2f}",
                    f"{statistics.median(states):,.0f} / {max(states):,}{state_verdict}",
                ]
            )
    if sorted_run is not None:
        states = sorted_run.state_bytes or [0]
        cost.append(
            [
                "1 msg",
                "64, the extension's default reorder window (30 min)",
                f"{(sorted_run.hub_operations or 0) / max(sorted_run.appends, 1):.1f}",
                f"{sorted_run.storage_requests / max(sorted_run.appends, 1):.2f}",
                "",
                f"{statistics.median(states):,.0f} / {max(states):,} "
                f"({sorted_run.state_blobs} checkpoints through a blob)",
            ]
        )
    takeover = [
        [
            "owner",
            "runs",
            "partition claimed after (median, s)",
            "claim to first commit (median / worst, s)",
            "target < 2 s",
        ]
    ]
    for kind, label in (("move", "moved (scale out/in)"), ("kill", "killed")):
        runs = failovers[kind]
        if not runs:
            continue
        commits = [c for _, c in runs]
        takeover.append(
            [
                label,
                str(len(runs)),
                f"{statistics.median(c for c, _ in runs):.2f}",
                f"{statistics.median(commits):.2f} / {max(commits):.2f}",
                "met" if max(commits) < TARGET_TAKEOVER_SECONDS else "MISS",
            ]
        )
    starts = idle.worker_start_seconds
    at_rest = [
        ["after idle", "seconds"],
        [
            "a worker's start: process, worker library, importing and indexing the app (median of "
            f"{len(starts)})",
            f"{statistics.median(starts):.2f}",
        ],
        ["one append, both groups running (median of 5)", f"{idle.steady_append:.2f}"],
        ["the first append, the HTTP group at zero (one cold start)", f"{idle.first_append_http_cold:.2f}"],
        ["the first append, both groups at zero (two cold starts)", f"{idle.first_append_both_cold:.2f}"],
        [
            "task hub operations a second while idle (queue polls, partition leases)",
            f"{idle.hub_operations_per_second:.1f}",
        ],
    ]
    return [throughput, cost, takeover, at_rest]


def describe(args: argparse.Namespace, modeled: dict[str, str]) -> str:
    model = "; ".join(f"{k} {v}" for k, v in modeled.items())
    return (
        f"Function App on the Durable host stand-in (Microsoft's worker library) vs `vault serve`, both "
        f"on Azurite, one stream per "
        f"run, {args.seconds:g} s per run, {VALUE_BYTES}-byte values; {os.cpu_count()} cores, "
        f"Python {platform.python_version()}. Modelled: {model}."
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short runs: a smoke test of the benchmark")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    args = parser.parse_args(argv)
    args.seconds = 3.0 if args.quick else 10.0
    args.failovers = 1 if args.quick else 5
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    figures, failovers, idle, modeled = run(args)
    results = tables(figures, failovers, idle)
    print()
    print(describe(args, modeled))
    for table in results:
        print()
        print(as_text(table))
    if args.markdown:
        body = "\n\n".join(as_markdown(table) for table in results)
        args.markdown.write_text(f"{describe(args, modeled)}\n\n{body}\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
