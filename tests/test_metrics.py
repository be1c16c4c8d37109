"""The vault's metrics: what the writer and the stores count, read through an in-memory reader in
this process, and what `vault serve` answers GET /metrics with after real traffic."""

from __future__ import annotations

import threading

import httpx
import pytest

import vault_core
from tests.support import telemetry
from tests.support.served import Served
from vault_core import FencedError, Message
from vault_core.client import VaultClient
from vault_core.writer import Batch

KEY = "metrics-test-key"


def batch(name: str, count: int) -> list[Message]:
    return [Message(name, f"{name}/{i}".encode()) for i in range(count)]


def test_appends_are_counted_per_stream_with_their_commits_and_times():
    store = vault_core.open_store("memory:")
    stream = "counted"
    with store.writer(stream) as writer:
        writer.append(batch("a", 2), batch_id="a")
        again = [Batch(batch("b", 3), "b"), Batch(batch("c", 4), "c"), Batch(batch("a", 2), "a")]
        assert not any(isinstance(outcome, Exception) for outcome in writer.append_all(again))
    # "a" again was found already stored: timed as an append, not counted as appended.
    assert telemetry.total("vault.append.batches", stream=stream) == 3
    assert telemetry.total("vault.append.messages", stream=stream) == 2 + 3 + 4
    assert telemetry.total("vault.append.bytes", stream=stream) == writer.position
    assert telemetry.total("vault.append.duration", stream=stream) == 4
    # Two commits: the first batch alone, then the two new batches of append_all together.
    assert telemetry.total("vault.commit.size", stream=stream) == 2
    assert telemetry.histogram_sum("vault.commit.size", stream=stream) == 3


def test_concurrent_appends_share_commits_and_the_commit_size_shows_it():
    store = vault_core.open_store("memory:")
    stream = "grouped"
    with store.writer(stream) as writer:
        threads = [
            threading.Thread(target=lambda p=p: [writer.append(batch(f"{p}-{n}", 1)) for n in range(50)])
            for p in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    commits = telemetry.total("vault.commit.size", stream=stream)
    assert telemetry.histogram_sum("vault.commit.size", stream=stream) == 400
    assert telemetry.total("vault.append.batches", stream=stream) == 400
    assert 1 <= commits <= 400


@pytest.mark.parametrize("kind", ["memory", "azurite"])
def test_a_takeover_and_the_writer_it_fenced_are_counted_once(kind, request):
    store = request.getfixturevalue(f"{kind}_store")  # on Azurite, a blob lease broken
    stream = f"taken-{kind}"
    old = store.writer(stream, lease_seconds=15)
    old.append(batch("first", 1))
    with store.writer(stream, lease_seconds=15, takeover=True) as new:
        new.append(batch("second", 1))
        for _attempt in range(2):
            with pytest.raises(FencedError):
                old.append(batch("late", 1))
    old.close()
    assert telemetry.total("vault.writer.takeovers", stream=stream) == 1
    assert telemetry.total("vault.writer.fenced", stream=stream) == 1


def test_vault_serve_answers_get_metrics_in_prometheus_text_behind_its_key(tmp_path):
    server = Served(str(tmp_path), None, "--api-key", KEY)
    try:
        assert httpx.get(f"{server.url}/metrics", timeout=10).status_code == 401
        client = VaultClient(server.url, key=KEY)
        results = [client.publish("orders", batch(f"o{n}", n + 1), idempotency_key=f"o{n}") for n in range(3)]
        client.publish("orders", batch("o0", 1), idempotency_key="o0")  # a retry: stored once
        store = vault_core.open_store(str(tmp_path))
        with store.checkpoints("projection") as checkpoints:
            checkpoints.save("orders", results[0].position, expected=None)
        samples = telemetry.scrape(server.url, **{"x-functions-key": KEY})
    finally:
        server.stop()
    orders = frozenset({("stream", "orders")})
    assert samples["vault_append_messages_total", orders] == 1 + 2 + 3
    assert samples["vault_append_batches_total", orders] == 3
    assert samples["vault_append_bytes_total", orders] == results[-1].position
    assert samples["vault_append_duration_seconds_count", orders] == 4
    assert samples["vault_commit_size_count", orders] == 3
    lag = frozenset({("group", "projection"), ("stream", "orders")})
    assert samples["vault_consumer_lag_bytes", lag] == results[-1].position - results[0].position
    assert samples["vault_consumer_lag_seconds", lag] >= 0
