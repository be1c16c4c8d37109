"""Appends when storage fails on the wire: producers on one stream through a fault-injecting
proxy in front of Azurite (tests/support/storage_proxy.py), each run in phases in the same
process: calm (everything passed through), faulty (5% of storage requests reset, cut off after
storage applied them, or answered 500 Operation timed out), delayed (5% held 50-400 ms), busy (5%
answered 503 Server Busy with Retry-After: 1, which is honoured), and slow (every request held
10-20 ms, what Azure's round trips add over Azurite's).

    .venv/bin/python bench/bench_faults.py                 # the writer directly and vault serve
    .venv/bin/python bench/bench_faults.py --seconds 5     # shorter phases

Every producer appends 5-message batches with batch ids (Idempotency-Keys over HTTP) and retries
a failed one with the same id, as a producer should; afterwards every acknowledged batch must be
in the stream exactly once, in each producer's order, and the stream must verify.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import vault_core  # noqa: E402
from tests.support import telemetry  # noqa: E402
from tests.support.azurite import Azurite  # noqa: E402
from tests.support.served import Served  # noqa: E402
from tests.support.storage_proxy import CALM, Faults, StorageProxy  # noqa: E402
from vault_core import Message  # noqa: E402
from vault_core.client import VaultClient  # noqa: E402

TARGET_RATIO = 0.5
PHASES = {
    "calm": CALM,
    "faulty": Faults(reset=0.0167, drop=0.0167, timeout=0.0167, seed=20),
    "delayed": Faults(delay=0.05, delay_seconds=(0.05, 0.4), seed=23),
    # Storage throttling, which asks for a second's pause: honoured, so no target.
    "busy": Faults(busy=0.05, seed=22),
    "slow": Faults(latency=(0.010, 0.020), seed=21),
}


@dataclass
class Phase:
    acknowledged: dict[str, list[str]] = field(default_factory=dict)  # producer -> batch ids, in order
    latencies: list[float] = field(default_factory=list)  # seconds per acknowledged batch, retries included
    seconds: float = 0.0
    commits: tuple[float, float] = (0.0, 0.0)  # commits made and the batches they held (vault.commit.size)

    def rate(self) -> float:
        return sum(len(ids) for ids in self.acknowledged.values()) / self.seconds


def messages(batch_id: str) -> list[Message]:
    return [Message(batch_id, f"{batch_id}:{i}".encode() * 10) for i in range(5)]


def produce(
    name: str, append: Callable[[str], None], until: float, phase: Phase, lock: threading.Lock
) -> None:
    ids: list[str] = []
    n = 0
    while time.monotonic() < until:
        batch_id, started = f"{name}-{n}", time.monotonic()
        for _attempt in range(20):  # bounded; a producer retries with the same id
            try:
                append(batch_id)
                break
            except Exception:
                time.sleep(0.05)
        else:
            raise RuntimeError(f"batch {batch_id} was refused 20 times")
        ids.append(batch_id)
        with lock:
            phase.latencies.append(time.monotonic() - started)
        n += 1
    with lock:
        phase.acknowledged[name] = ids


def run_phase(label: str, producers: int, append: Callable[[str], None], seconds: float) -> Phase:
    phase, lock = Phase(), threading.Lock()
    started = time.monotonic()
    threads = [
        threading.Thread(target=produce, args=(f"{label}-{p}", append, started + seconds, phase, lock))
        for p in range(producers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    phase.seconds = time.monotonic() - started
    return phase


def check(store: vault_core.Store, stream: str, phases: dict[str, Phase]) -> None:
    """Every acknowledged batch once (its 5 messages, no more), in each producer's order; the
    stream verifies."""
    keys = [m.key for m in store.reader(stream).replay()]
    counts, order = Counter(keys), list(dict.fromkeys(keys))
    for phase in phases.values():
        for ids in phase.acknowledged.values():
            wanted = set(ids)
            assert [key for key in order if key in wanted] == ids, (
                "a producer's batch is missing or out of order"
            )
            assert all(counts[batch_id] == 5 for batch_id in ids), "a batch is stored twice or in part"
    assert store.reader(stream).verify().batches == len(order)


def direct(connection: str, producers: int, seconds: float, proxy: StorageProxy) -> dict[str, Phase]:
    store = vault_core.open_store(connection, container="bench")
    phases = {}
    stream = f"direct-{producers}"
    with store.writer(stream) as writer:
        for label, faults in PHASES.items():
            proxy.inject(faults)
            before = commits_in_process(stream)
            phases[label] = run_phase(
                label,
                producers,
                lambda batch_id: writer.append(messages(batch_id), batch_id=batch_id),
                seconds,
            )
            phases[label].commits = minus(commits_in_process(stream), before)
    proxy.inject(CALM)
    check(store, stream, phases)
    return phases


def served(connection: str, producers: int, seconds: float, proxy: StorageProxy) -> dict[str, Phase]:
    # The server's access log goes to a file: it would drown the figures.
    log = Path(tempfile.gettempdir()) / "bench_faults_serve.log"
    server, stream = Served(connection, "bench", log=log), f"served-{producers}"
    clients = threading.local()

    def append(batch_id: str) -> None:
        if not hasattr(clients, "client"):
            clients.client = VaultClient(server.url, attempts=1)
        clients.client.publish(stream, messages(batch_id), idempotency_key=batch_id)

    phases = {}
    try:
        for label, faults in PHASES.items():
            proxy.inject(faults)
            before = commits_served(server.url, stream)
            phases[label] = run_phase(label, producers, append, seconds)
            phases[label].commits = minus(commits_served(server.url, stream), before)
    finally:
        proxy.inject(CALM)
        server.stop()
    check(vault_core.open_store(connection, container="bench"), stream, phases)
    return phases


def commits_in_process(stream: str) -> tuple[float, float]:
    return telemetry.total("vault.commit.size", stream=stream), telemetry.histogram_sum(
        "vault.commit.size", stream=stream
    )


def commits_served(url: str, stream: str) -> tuple[float, float]:
    samples = telemetry.scrape(url)
    return (
        telemetry.summed(samples, "vault_commit_size_count", stream=stream),
        telemetry.summed(samples, "vault_commit_size_sum", stream=stream),
    )


def minus(after: tuple[float, float], before: tuple[float, float]) -> tuple[float, float]:
    return after[0] - before[0], after[1] - before[1]


def report(title: str, phases: dict[str, Phase]) -> None:
    calm = phases["calm"].rate()
    print(title)
    for label, phase in phases.items():
        ratio = phase.rate() / calm
        verdict = (
            ""
            if label in ("calm", "busy")
            else f"  (target >= {TARGET_RATIO}: {'met' if ratio >= TARGET_RATIO else 'MISSED'})"
        )
        print(
            f"  {label:<8}{phase.rate():8.1f} batches/s  {ratio:5.2f}x  append p50 "
            f"{statistics.median(phase.latencies) * 1000:6.1f} ms  p99 "
            f"{statistics.quantiles(phase.latencies, n=100)[98] * 1000:7.1f} ms  max "
            f"{max(phase.latencies) * 1000:7.1f} ms  {phase.commits[1] / max(phase.commits[0], 1):4.1f} "
            f"batches/commit{verdict}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase (10)")
    parser.add_argument("--only", choices=("direct", "served"), help="one of the two runs")
    args = parser.parse_args()
    telemetry.install()  # the writer's commit sizes, read in this process
    azurite = Azurite()
    try:
        with StorageProxy(azurite.port) as proxy:
            connection = proxy.connection_string(azurite)
            for name, run in (("direct", direct), ("served", served)):
                if args.only in (None, name):
                    for producers in (1, 8):
                        before = proxy.faulted()
                        phases = run(connection, producers, args.seconds, proxy)
                        report(
                            f"{name}, {producers} producers ({proxy.faulted() - before} storage faults):",
                            phases,
                        )
    finally:
        azurite.stop()


if __name__ == "__main__":
    main()
