"""The Function App's metrics, exported by Azure Monitor's distro to an ingestion endpoint on
loopback (tests/support/ingestion.py), and its entity appending through storage faults
(tests/support/storage_proxy.py between the app's store and Azurite) on the Durable host stand-in:
every acknowledged batch stored once, in order, and each fault counted in the metrics it sends."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

import vault_core
from tests.support.durable.host import DurableHost
from tests.support.durable.settings import app_settings, scaled
from tests.support.faulted import FAULTY, assert_once_in_order, messages, produce
from tests.support.ingestion import Ingestion
from tests.support.storage_proxy import CALM, StorageProxy
from vault_core.client import VaultClient

_containers = itertools.count()


@pytest.fixture(scope="module")
def metered(azurite) -> Iterator[tuple[DurableHost, StorageProxy, Ingestion, str]]:
    """The app with its streams' store behind a storage proxy (the task hub's storage is not)
    and Application Insights on loopback."""
    container = f"metered-{next(_containers)}"
    ingestion = Ingestion()
    with StorageProxy(azurite.port) as blobs:
        settings = app_settings(
            azurite,
            container,
            VAULT_STORE=blobs.connection_string(azurite),
            APPLICATIONINSIGHTS_CONNECTION_STRING=ingestion.connection_string(),
            **Ingestion.offline(),
        )
        with DurableHost(settings, settings=scaled(0.1)) as host:
            yield host, blobs, ingestion, container
    ingestion.close()


def eventually(check, seconds: float = 60.0) -> None:
    """`check()` until it holds: the exporter sends every second, so a minute is plenty."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "the metrics did not arrive"
        time.sleep(0.25)


def test_the_app_exports_its_appends_to_application_insights(metered):
    host, _blobs, ingestion, _container = metered
    client = VaultClient(host.url, attempts=6)
    sent = sum(
        len(client.publish("exported", messages(f"e{n}"), idempotency_key=f"e{n}").offsets) for n in range(6)
    )
    eventually(lambda: ingestion.total("vault.append.messages", stream="exported") >= sent)
    assert ingestion.total("vault.append.messages", stream="exported") == sent
    eventually(lambda: ingestion.total("vault.append.batches", stream="exported") == 6)
    eventually(lambda: ingestion.total("vault.entity.operations", stream="exported") >= 1)
    operations = ingestion.metric("vault.entity.operations", stream="exported")
    assert sum(point["value"] for point in operations) == 6  # every operation, in some invocation
    assert all(point["min"] >= 1 for point in ingestion.metric("vault.entity.state.bytes", stream="exported"))


def test_the_app_exports_consumer_lag(metered, azurite):
    host, _blobs, ingestion, container = metered
    client = VaultClient(host.url, attempts=6)
    first = client.publish("lagging", messages("l0"), idempotency_key="l0")
    last = client.publish("lagging", messages("l1"), idempotency_key="l1")
    store = vault_core.open_store(azurite.connection_string, container=container)
    with store.checkpoints("projection") as checkpoints:
        checkpoints.save("lagging", first.position, expected=None)
    lag = {"group": "projection", "stream": "lagging"}
    eventually(lambda: bool(ingestion.metric("vault.consumer.lag.bytes", **lag)))
    assert ingestion.metric("vault.consumer.lag.bytes", **lag)[-1]["value"] == last.position - first.position
    assert ingestion.metric("vault.consumer.lag.seconds", **lag)[-1]["value"] >= 0


def test_entity_appends_through_storage_faults_are_stored_once_and_the_faults_counted(metered, azurite):
    host, blobs, ingestion, container = metered
    clients = threading.local()

    def publish(batch_id: str) -> None:
        if not hasattr(clients, "client"):
            clients.client = VaultClient(host.url, attempts=6)
        clients.client.publish("faulted", messages(batch_id), idempotency_key=batch_id)

    publish("first")
    blobs.inject(replace(FAULTY, seed=22))
    try:
        acknowledged = produce(4, 25, publish)
    finally:
        blobs.inject(CALM)
    acknowledged["first"] = ["first"]
    assert_once_in_order(
        vault_core.open_store(azurite.connection_string, container=container), "faulted", acknowledged
    )
    assert blobs.faulted() >= 3, blobs.faults
    # Every fault the app met was counted and sent (the staging container's requests too).
    eventually(lambda: ingestion.total("vault.storage.faults") >= blobs.faulted())
    assert ingestion.total("vault.storage.faults") == blobs.faulted()
    assert ingestion.total("vault.storage.faults", kind="throttled") == blobs.faults["busy"]
