"""StreamReader.seek_time (the first message at or after a time, by binary search), status() and
verify(), on both stores."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta

import pytest

import vault_core
from tests.support.sources import CountingSource
from vault_core import format as fmt
from vault_core import seek


def _stream_with_many_timestamps(store: vault_core.Store) -> list[vault_core.StoredMessage]:
    """Batches of varied sizes over many milliseconds; values full of batch magic bytes, which a
    search that looks for batch starts must not be fooled by."""
    with store.writer("orders") as writer:
        for i in range(400):
            value = fmt.BATCH_MAGIC * 20 + os.urandom(i % 3000)
            writer.append([vault_core.Message(f"k{i}", value)] * (1 + i % 4))
            if i % 20 == 0:
                time.sleep(0.003)
    return list(store.reader("orders").replay())


@pytest.mark.parametrize("span", [seek.SEEK_SPAN, 4096])
def test_seek_time_finds_the_first_message_at_or_after_a_time(store, monkeypatch, span):
    monkeypatch.setattr(seek, "SEEK_SPAN", span)
    monkeypatch.setattr(seek, "SEEK_PROBE", min(span, seek.SEEK_PROBE))
    messages = _stream_with_many_timestamps(store)
    reader = store.reader("orders")
    end = reader.position()
    times = sorted({m.timestamp_ms for m in messages})
    for target in [*times[::5], times[-1], times[0] - 1, times[-1] + 1]:
        expected = next((m.offset for m in messages if m.timestamp_ms >= target), end)
        assert reader.seek_time(fmt.from_ms(target)) == expected, target
    # Between two batch times, the later batch; a naive time is UTC.
    if len(times) > 2 and times[1] - times[0] > 1:
        assert reader.seek_time(fmt.from_ms(times[0] + 1).replace(tzinfo=None)) == next(
            m.offset for m in messages if m.timestamp_ms == times[1]
        )


def test_seek_time_reads_a_small_part_of_a_long_stream(local_store, monkeypatch):
    monkeypatch.setattr(seek, "SEEK_SPAN", 64 * 1024)
    with local_store.writer("orders") as writer:
        for i in range(2000):
            writer.append([vault_core.Message("k", os.urandom(4000))])
            if i % 50 == 0:
                time.sleep(0.002)
    messages = list(local_store.reader("orders").replay())
    counting = CountingSource(local_store.open_source("orders"))
    reader = vault_core.StreamReader("orders", counting)
    middle = messages[len(messages) // 2]
    assert reader.seek_time(middle.timestamp) == next(
        m.offset for m in messages if m.timestamp_ms == middle.timestamp_ms
    )
    assert counting.bytes_read < reader.position() / 8


def test_seek_time_on_empty_and_unknown_streams(store):
    assert store.reader("nothing").seek_time(datetime.now(UTC)) == 0
    with store.writer("orders") as writer:
        first = writer.append([vault_core.Message("k", b"v")])
    reader = store.reader("orders")
    assert reader.seek_time(datetime(2000, 1, 1, tzinfo=UTC)) == first.offsets[0]
    assert reader.seek_time(datetime.now(UTC) + timedelta(days=1)) == first.position
    with pytest.raises(TypeError, match="expected a datetime"):
        reader.seek_time("2026-01-01")  # type: ignore[arg-type]


def test_status_reports_position_size_and_last_append(store):
    assert store.reader("orders").status() == vault_core.StreamStatus("orders", 0, 0, None)
    with store.writer("orders") as writer:
        result = writer.append([vault_core.Message("k", b"v" * 5000)])
    status = store.reader("orders").status()
    stored = next(iter(store.reader("orders").replay()))
    assert (status.position, status.last_append) == (result.position, stored.timestamp)
    assert status.size >= fmt.data_at(result.position)


def test_verify_counts_what_it_checked_and_reports_progress(store):
    with store.writer("orders") as writer:
        for i in range(30):
            writer.append([vault_core.Message("k", os.urandom(20_000))] * 5, batch_id=f"b-{i}")
    seen: list[int] = []
    report = store.reader("orders").verify(progress=seen.append)
    end = store.reader("orders").position()
    assert report == vault_core.VerifyReport("orders", end, 30, 150)
    assert seen == sorted(seen) and seen[-1] == end


def test_verify_stops_at_a_truncated_log(local_store):
    with local_store.writer("orders") as writer:
        for _ in range(10):
            last = writer.append([vault_core.Message("k", os.urandom(2000))])
    log = local_store.backend.root / "orders" / "log"
    os.truncate(log, fmt.data_at(last.position - 1000))
    with pytest.raises(vault_core.CorruptDataError) as damage:
        local_store.reader("orders").verify()
    assert damage.value.position <= last.position - 1000
