"""Storage failing on the wire (tests/support/storage_proxy.py between the vault and Azurite):
connections reset before a request reaches storage, answers cut off after storage applied the
request, requests held, and storage's own 503 Server Busy and 500 Operation timed out. Through
all of it every acknowledged batch is in the stream exactly once, in each producer's order,
nothing unacknowledged is there in part, the stream verifies, and no checkpoint skips a batch."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from dataclasses import replace

import pytest

import vault_core
from tests.support import telemetry
from tests.support.faulted import (
    ATTEMPTS,
    FAULTY,
    assert_counted,
    assert_faulted,
    assert_once_in_order,
    messages,
    produce,
    retried,
)
from tests.support.served import Served
from tests.support.storage_proxy import CALM, Faults, StorageProxy
from vault_core import Message
from vault_core.client import VaultClient

_containers = itertools.count()


@pytest.fixture
def proxied(azurite) -> Iterator[tuple[StorageProxy, StorageProxy, str]]:
    """Proxies in front of Azurite's blob and table services, calm until a test injects faults,
    and a connection string through both."""
    with StorageProxy(azurite.port) as blobs, StorageProxy(azurite.table_port) as tables:
        yield blobs, tables, tables.connection_string(blobs.connection_string(azurite))


def written(azurite, batches: int) -> tuple[str, vault_core.Store]:
    """A new container holding stream "s" of `batches` batches, appended straight to Azurite;
    the container and that store."""
    container = f"faults-{next(_containers)}"
    direct = vault_core.open_store(azurite.connection_string, container=container)
    with direct.writer("s") as writer:
        for n in range(batches):
            writer.append(messages(f"b-{n}"), batch_id=f"b-{n}")
    return container, direct


def test_appends_through_storage_faults_are_stored_once_in_order(azurite, proxied):
    blobs, _tables, connection = proxied
    container = f"faults-{next(_containers)}"
    store = vault_core.open_store(connection, container=container)
    counted = telemetry.by("vault.storage.faults", "kind", stream="s")
    with store.writer("s") as writer:
        writer.append(messages("first"), batch_id="first")
        blobs.inject(replace(FAULTY, seed=1))
        acknowledged = produce(4, 40, lambda batch_id: writer.append(messages(batch_id), batch_id=batch_id))
        blobs.inject(CALM)
    assert_faulted(blobs)
    assert_counted(counted, telemetry.by("vault.storage.faults", "kind", stream="s"), blobs)
    acknowledged["first"] = ["first"]
    assert_once_in_order(
        vault_core.open_store(azurite.connection_string, container=container), "s", acknowledged
    )


def test_reads_through_storage_faults_return_the_stream_as_it_is(azurite, proxied):
    blobs, _tables, connection = proxied
    container, direct = written(azurite, 300)
    expected = [(m.offset, m.key, m.value) for m in direct.reader("s").replay()]
    blobs.inject(replace(FAULTY, seed=2))
    reader = vault_core.open_store(connection, container=container).reader("s")
    for _round in range(3):  # replay, paged reads and verify, each through the faults
        assert [(m.offset, m.key, m.value) for m in reader.replay()] == expected
        paged, position = [], 0
        while position < reader.position():
            page = reader.read(position, max_messages=50)
            paged += [(m.offset, m.key, m.value) for m in page.messages]
            position = page.next_position
        assert paged == expected
        assert reader.verify().batches == 300
    assert_faulted(blobs)


def test_a_consumer_group_through_storage_faults_reads_every_batch_and_skips_none(azurite, proxied):
    blobs, tables, connection = proxied
    container, direct = written(azurite, 200)
    store = vault_core.open_store(connection, container=container)
    faults_before = telemetry.total("vault.storage.faults")
    for proxy, seed in ((blobs, 3), (tables, 4)):
        proxy.inject(replace(FAULTY, seed=seed))
    seen: list[str] = []
    for _attempt in range(ATTEMPTS * 10):  # a consumer that fails is started again: bounded
        try:
            with store.checkpoints("g") as checkpoints:
                consumer = vault_core.Consumer(store.reader("s"), checkpoints)
                for batch in consumer.batches():
                    seen.append(batch.messages[0].key)
                break
        except vault_core.CheckpointConflict:  # a save whose answer was lost is read back instead
            raise
        except Exception:
            continue
    else:
        pytest.fail("the consumer never got through")
    for proxy in (blobs, tables):
        proxy.inject(CALM)
    # At least once, in order: a batch comes again only where its checkpoint was not saved.
    names = [f"b-{n}" for n in range(200)]
    assert list(dict.fromkeys(seen)) == names
    assert direct.checkpoints("g").get("s").position == direct.reader("s").position()
    assert_faulted(tables)  # (a replay makes few blob requests: reads through faults are tested above)
    # Table storage's faults are counted as the blob service's are.
    assert telemetry.total("vault.storage.faults") - faults_before == blobs.faulted() + tables.faulted()


@pytest.mark.parametrize("producers", [1, 8])
def test_vault_serve_through_storage_faults_stores_each_acknowledged_batch_once(azurite, proxied, producers):
    blobs, _tables, connection = proxied
    container = f"faults-{next(_containers)}"
    server = Served(connection, container)
    clients = threading.local()

    def publish(batch_id: str) -> None:
        if not hasattr(clients, "client"):
            clients.client = VaultClient(server.url, attempts=6)
        clients.client.publish("s", messages(batch_id), idempotency_key=batch_id)

    try:
        publish("first")
        blobs.inject(replace(FAULTY, seed=10 + producers))
        acknowledged = produce(producers, 160 // producers, publish)
        blobs.inject(CALM)
        samples = telemetry.scrape(server.url)
    finally:
        server.stop()
    assert blobs.faulted() > 0
    # What the server counted is what the proxy did to it.
    assert telemetry.summed(samples, "vault_storage_faults_total") == blobs.faulted()
    assert telemetry.summed(samples, "vault_storage_faults_total", kind="throttled") == blobs.faults["busy"]
    assert 0 < telemetry.summed(samples, "vault_storage_retries_total") <= blobs.faulted()
    assert (
        telemetry.summed(samples, "vault_append_batches_total", stream="s")
        == 1 + 160 // producers * producers
    )
    acknowledged["first"] = ["first"]
    assert_once_in_order(
        vault_core.open_store(azurite.connection_string, container=container), "s", acknowledged
    )


def test_a_mirror_through_storage_faults_is_the_stream_byte_for_byte(azurite, proxied, tmp_path):
    blobs, _tables, connection = proxied
    container = f"faults-{next(_containers)}"
    direct = vault_core.open_store(azurite.connection_string, container=container)
    reader = vault_core.open_store(connection, container=container).reader("s")
    copy = tmp_path / "copy"
    # A mirror reads in large chunks, a few requests a round: faults come more often here.
    blobs.inject(Faults(reset=0.08, drop=0.08, timeout=0.08, seed=5))
    with direct.writer("s") as writer:
        for round_ in range(8):  # the stream grows between mirrors: each copies what is new
            for n in range(30):
                writer.append(messages(f"r{round_}-{n}"), batch_id=f"r{round_}-{n}")
            retried(lambda: vault_core.mirror(reader, copy))
    blobs.inject(CALM)
    mirrored = vault_core.open_store(copy).reader("s")
    assert [(m.offset, m.key, m.value) for m in mirrored.replay()] == [
        (m.offset, m.key, m.value) for m in direct.reader("s").replay()
    ]
    assert mirrored.verify().batches == 240
    assert_faulted(blobs, at_least=3)


def test_a_publish_through_storage_faults_resumes_and_stores_each_line_once(azurite, proxied):
    blobs, _tables, connection = proxied
    container = f"faults-{next(_containers)}"
    store = vault_core.open_store(connection, container=container)
    lines = [Message(f"line-{n}", f"value {n}".encode() * 10) for n in range(600)]
    blobs.inject(replace(FAULTY, seed=6))
    result = retried(lambda: vault_core.publish("s", lines, batch_size=10, store=store))
    blobs.inject(CALM)
    assert isinstance(result, vault_core.PublishResult) and result.complete
    direct = vault_core.open_store(azurite.connection_string, container=container)
    assert [(m.key, m.value) for m in direct.reader("s").replay()] == [(m.key, m.value) for m in lines]
    assert_faulted(blobs)
