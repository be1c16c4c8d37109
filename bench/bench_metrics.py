"""What recording the metrics costs an append: batches a second, one and eight producers on one
stream, 1-message batches, with no MeterProvider installed (the instruments record into nothing)
and with `vault serve`'s (vault_core.metrics.install: a Prometheus view); on the local store
(durable on disk) and on the memory store (which costs least, so that the instruments' share
shows most). Each side runs in a process of its own, since a process installs a MeterProvider
once.

    .venv/bin/python bench/bench_metrics.py
    .venv/bin/python bench/bench_metrics.py --seconds 5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def appends_per_second(target: str, producers: int, seconds: float) -> float:
    import vault_core
    from vault_core import Message

    store = vault_core.open_store(target)
    counts = [0] * producers
    stop = time.monotonic() + seconds
    with store.writer("bench") as writer:

        def produce(index: int) -> None:
            while time.monotonic() < stop:
                writer.append([Message("k", b"v" * 100)])
                counts[index] += 1

        threads = [threading.Thread(target=produce, args=(i,)) for i in range(producers)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        took = time.monotonic() - started
    return sum(counts) / took


def child(metered: bool, seconds: float) -> None:
    if metered:
        from vault_core import metrics

        metrics.install()
    with tempfile.TemporaryDirectory() as folder:
        stores = {"local": folder, "memory": "memory:"}
        print(
            json.dumps(
                {
                    f"{name} {p}": appends_per_second(t, p, seconds)
                    for name, t in stores.items()
                    for p in (1, 8)
                }
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per run (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each side, the best kept (default 3)")
    parser.add_argument("--child", choices=["off", "on"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child == "on", args.seconds)
        return
    best: dict[str, dict[str, float]] = {"off": {}, "on": {}}
    for _round in range(args.rounds):
        for side in ("off", "on"):  # alternated, so that drift hits both alike
            run = [sys.executable, __file__, "--child", side, "--seconds", str(args.seconds)]
            rates = json.loads(subprocess.run(run, check=True, capture_output=True, text=True).stdout)
            for producers, rate in rates.items():
                best[side][producers] = max(best[side].get(producers, 0.0), rate)
    print(f"{'store, producers':>16}  {'no metrics':>12}  {'metrics':>12}  ratio")
    for run in best["off"]:
        off, on = best["off"][run], best["on"][run]
        print(f"{run:>16}  {off:>10.0f}/s  {on:>10.0f}/s  {on / off:.2f}x")


if __name__ == "__main__":
    main()
