"""The Function App under the Durable host stand-in (tests/support/durable), beside `vault serve` on
the same storage (Azurite) in the same run: appends per second on one stream by 1, 8 and 64
concurrent producers of 1-message and 1,000-message batches; how many operations the stream's entity
gets per invocation; and how long the stream takes to accept appends again after its owner dies or
its partition moves.

    .venv/bin/python bench/bench_function_app.py            # the full run, about 4 minutes
    .venv/bin/python bench/bench_function_app.py --quick    # a smoke run, about a minute
    .venv/bin/python bench/bench_function_app.py --markdown out.md

docs/performance.md ("The Function App") explains what is measured and how to read it. The
producers run in a process of their own (VaultClient over HTTP, each publishing one batch after
another with its own Idempotency-Keys), so their CPU does not compete with the host stand-in's
threads for one interpreter. Nothing is written into the repository unless --markdown is given.
"""

from __future__ import annotations

import argparse
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
from tests.support.durable.host import DurableHost, scaled  # noqa: E402
from tests.support.served import Served  # noqa: E402
from vault_core import Message  # noqa: E402
from vault_core.client import VaultClient  # noqa: E402

PRODUCERS = (1, 8, 64)
BATCH_SIZES = (1, 1000)
VALUE_BYTES = 100
TARGET_MESSAGES_PER_INVOCATION = 10  # with 64 single-message producers on one stream
TARGET_TAKEOVER_SECONDS = 2.0
SCALE = 0.1  # the stand-in's partition lease (30 s on Azure), visibility and drain times, scaled


# --- producers, in a process of their own -------------------------------------------------------


def produce(
    url: str, stream: str, producers: int, size: int, seconds: float, results: multiprocessing.Queue
) -> None:
    """`producers` threads publish `size`-message batches to `stream` one after another for
    `seconds` (after one untimed warm-up batch each); puts (appends, messages, seconds, errors)."""
    counts = [0] * producers
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
                try:
                    client.publish(stream, messages, idempotency_key=uuid.uuid4().hex)
                    counts[index] += 1
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
    results.put((sum(counts), sum(counts) * size, elapsed, errors))


def measure(url: str, stream: str, producers: int, size: int, seconds: float) -> tuple[int, int, float]:
    results: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()
    process = multiprocessing.get_context("spawn").Process(
        target=produce, args=(url, stream, producers, size, seconds, results)
    )
    process.start()
    appends, messages, elapsed, errors = results.get(timeout=seconds + 600)
    process.join()
    if errors:
        raise RuntimeError(f"{len(errors)} producer calls failed, first: {errors[0]}")
    return appends, messages, elapsed


@dataclass
class Figure:
    target: str
    producers: int
    size: int
    appends: int
    messages: int
    seconds: float
    per_invocation: float | None = None
    host_cpu: float | None = None  # CPU seconds of the host stand-in's own threads (this process)

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


def run(
    args: argparse.Namespace,
) -> tuple[list[Figure], dict[str, list[tuple[float, float]]], dict[str, str]]:
    figures: list[Figure] = []
    failovers: dict[str, list[tuple[float, float]]] = {"move": [], "kill": []}
    azurite = Azurite()
    try:
        settings = {
            "AzureWebJobsStorage": azurite.connection_string,
            "VAULT_STORE": azurite.connection_string,
            "VAULT_CONTAINER": "bench",
            "VAULT_STAGING_CONTAINER": "bench-staging",
            "VAULT_TASK_HUB": "bench",
        }
        served = Served(azurite.connection_string, "bench-serve")
        try:
            with DurableHost(settings, instances=2, settings=scaled(SCALE)) as host:
                host.settle()
                modeled = {
                    "Durable's storage round trip": f"{host.settings.storage_latency * 1000:.0f} ms",
                    "maxQueuePollingInterval": f"{host.settings.max_polling_interval:g} s",
                    "partitions": str(host.settings.partition_count),
                    "maxEntityOperationBatchSize": str(host.settings.max_entity_batch),
                    "partition lease (30 s on Azure)": f"{host.settings.lease_interval:g} s",
                    "instances": "2, in worker processes",
                }
                for size in BATCH_SIZES:
                    for producers in PRODUCERS:
                        for target, url in (("Function App", host.url), ("vault serve", served.url)):
                            stream = f"s{size}-x{producers}-{target.split()[0].lower()}"
                            sizes_before, cpu_before = len(host.batch_sizes), time.process_time()
                            appends, messages, seconds = measure(url, stream, producers, size, args.seconds)
                            figure = Figure(target, producers, size, appends, messages, seconds)
                            if target == "Function App":
                                sizes = host.batch_sizes[sizes_before:]
                                figure.per_invocation = sum(sizes) / len(sizes) if sizes else None
                                figure.host_cpu = time.process_time() - cpu_before
                            figures.append(figure)
                            print(
                                f"  {target:<12} x{producers:<2} {size:>4}-message batches: "
                                f"{figure.appends_per_second:8.1f} appends/s",
                                flush=True,
                            )
                for attempt in range(args.failovers):
                    for kind in ("move", "kill"):
                        result = failover(host, f"failover-{kind}-{attempt}", kind)
                        failovers[kind].append(result)
                        print(
                            f"  {kind}: claimed after {result[0]:.2f} s, committed {result[1]:.2f} s later",
                            flush=True,
                        )
        finally:
            served.stop()
    finally:
        azurite.stop()
    return figures, failovers, modeled


def tables(
    figures: list[Figure], failovers: dict[str, list[tuple[float, float]]]
) -> tuple[list[list[str]], list[list[str]]]:
    by = {(f.target, f.producers, f.size): f for f in figures}
    throughput = [
        [
            "batch",
            "producers",
            "Function App appends/s",
            "msg/s",
            "vault serve appends/s",
            "ratio",
            "ops per entity invocation",
            "stand-in CPU",
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
                    f"{app.messages_per_second:,.0f}",
                    f"{serve.appends_per_second:,.1f}",
                    f"{app.appends_per_second / serve.appends_per_second:.2f}",
                    ("-" if per is None else f"{per:.1f}") + verdict,
                    f"{app.host_cpu / app.seconds:.0%} of a core" if app.host_cpu is not None else "-",
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
    return throughput, takeover


def describe(args: argparse.Namespace, modeled: dict[str, str]) -> str:
    model = "; ".join(f"{k} {v}" for k, v in modeled.items())
    return (
        f"Function App on the Durable host stand-in vs `vault serve`, both on Azurite, one stream per "
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
    figures, failovers, modeled = run(args)
    throughput, takeover = tables(figures, failovers)
    print()
    print(describe(args, modeled))
    print()
    print(as_text(throughput))
    print()
    print(as_text(takeover))
    if args.markdown:
        args.markdown.write_text(
            f"{describe(args, modeled)}\n\n{as_markdown(throughput)}\n\n{as_markdown(takeover)}\n",
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
