"""Segmented streams on Azurite: replay of one stream in 1 MiB segments beside the same stream in
one segment, in the same run; what a roll adds to the append that triggers it (in a stream of
16 MiB segments, whose seals finish before the next roll, as at any real segment size; at 1 MiB
every roll waits for the seal before it); and what a TB of stream costs a month kept hot or
tiered, from list prices.

    .venv/bin/python bench/bench_segments.py              # 1 GB streams, a few minutes
    .venv/bin/python bench/bench_segments.py --megabytes 100

Azurite runs in memory on 127.0.0.1 for the run and is stopped at its end.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import vault_core  # noqa: E402
from tests.support.azurite import Azurite  # noqa: E402
from vault_core import Message  # noqa: E402

MB = 1_000_000
MiB = 1024 * 1024
BATCH = [Message(f"key-{i % 8}", bytes([i % 251]) * 4096) for i in range(64)]  # 256 KiB of values
TARGET_REPLAY_RATIO = 0.9

# List prices in USD, LRS, East US (docs/performance.md says where each comes from and how far it
# was checked): per GB-month stored, Standard page blobs ~0.045 (what an active segment costs),
# block blobs in Hot ~0.018, Cool ~0.01 and Cold ~0.0036; per GB read back, Cool ~0.01 and Cold ~0.03.
# Today's are on https://azure.microsoft.com/pricing/details/storage/blobs/ and .../page-blobs/.
PRICES = {"page blob": 0.045, "block blob, Hot": 0.018, "block blob, Cool": 0.01, "block blob, Cold": 0.0036}
READ_PRICES = {"Cool": 0.01, "Cold": 0.03}


def write(
    store: vault_core.Store, stream: str, megabytes: int, segment_bytes: int
) -> list[tuple[float, bool]]:
    """Append until the stream holds `megabytes`; each append's seconds, and whether it rolled."""
    timings = []
    with store.writer(stream, segment_bytes=segment_bytes) as writer:
        while writer.position < megabytes * MB:
            base = writer.segment_base
            started = time.perf_counter()
            writer.append(BATCH)
            timings.append((time.perf_counter() - started, writer.segment_base != base))
    return timings


def replay_rate(store: vault_core.Store, stream: str) -> float:
    reader = store.reader(stream)
    started = time.perf_counter()
    size = sum(len(m.key) + len(m.value) for m in reader.replay())
    return size / (time.perf_counter() - started) / MB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--megabytes", type=int, default=1000, help="size of each stream (1000)")
    args = parser.parse_args()
    azurite = Azurite()
    try:
        store = vault_core.open_store(azurite.connection_string, container="bench")
        plain = [seconds for seconds, _ in write(store, "one", args.megabytes, 4 * 1024**4)]
        often = write(store, "many", args.megabytes, MiB)
        timings = write(store, "spaced", min(args.megabytes, 400), 16 * MiB)
        segments = len(store.backend.segments("many"))
        rates = {name: [replay_rate(store, name) for _ in range(3)] for name in ("one", "many")}
    finally:
        azurite.stop()
    one, many = (statistics.median(rates[name]) for name in ("one", "many"))
    sealing = [seconds for seconds, rolled in often if not rolled]
    spaced = [seconds for seconds, rolled in timings if not rolled]
    rolls = [seconds for seconds, rolled in timings if rolled]
    ratio = many / one
    print(f"replay, {args.megabytes} MB stream on Azurite (median of 3, MB/s of keys and values):")
    print(f"  one segment          {one:8.1f}")
    print(
        f"  {segments:4d} segments of 1 MiB {many:6.1f}   ratio {ratio:.2f} "
        f"(target >= {TARGET_REPLAY_RATIO}: {'met' if ratio >= TARGET_REPLAY_RATIO else 'MISSED'})"
    )
    print(
        f"append of a 256 KiB batch, median: {statistics.median(plain) * 1000:.1f} ms in one segment, "
        f"{statistics.median(sealing) * 1000:.1f} ms in 1 MiB segments (a seal always running beside it)"
    )
    print(
        f"in 16 MiB segments: {statistics.median(spaced) * 1000:.1f} ms; one that rolls: median "
        f"{statistics.median(rolls) * 1000:.1f} ms over {len(rolls)} rolls "
        f"(adds {(statistics.median(rolls) - statistics.median(spaced)) * 1000:.1f} ms)"
    )
    print("a TB-month of stream data, USD (list prices assumed above):")
    page, hot, cool, cold = PRICES.values()
    # Sealed data kept for a year, in Hot (the account's default tier) or tiered by the Bicep's
    # defaults (Cool after 30 days, Cold after 90): the share of the year it spends in each tier.
    cooled = (30 * hot + 335 * cool) / 365
    tiered = (30 * hot + 60 * cool + 275 * cold) / 365
    print(f"  in the active segment          {1000 * page:8.2f}  (a page blob, until it rolls)")
    print(f"  sealed, kept in Hot            {1000 * hot:8.2f}")
    print(f"  sealed, Cool after 30 days     {1000 * cooled:8.2f}  (averaged over a year)")
    print(f"  Cool after 30, Cold after 90   {1000 * tiered:8.2f}  (averaged over a year)")
    print(f"  in Cold, steady state          {1000 * cold:8.2f}")
    print("a replay of a TB read back, USD (retrieval; Hot and page blobs charge none):")
    for tier, price in READ_PRICES.items():
        print(f"  from {tier:<4}                      {1000 * price:8.2f}")


if __name__ == "__main__":
    main()
