"""The Function App under the faults of its runtime, on the Durable host stand-in: instances
killed and frozen mid-write, partitions moving, workers hung past the function timeout, all while
producers publish. Every acknowledged message must be in its stream exactly once, in the order
its producer had it acknowledged, and no producer call may fail for good. Lease, visibility and
drain times are scaled down (the real ones are 30 s, 5 min and 60 s); every loop is bounded."""

from __future__ import annotations

import contextlib
import itertools
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

import vault_core
from tests.support.durable import protocol
from tests.support.durable.host import AppInstance, DurableHost
from tests.support.durable.settings import app_settings, scaled
from vault_core import Message
from vault_core.client import VaultClient

_containers = itertools.count()
LEASE_SECONDS = 60


@dataclass
class Producer:
    """Publishes batches to one stream in sequence; remembers what was acknowledged."""

    name: str
    stream: str
    url: str
    acked: list[tuple[list[Message], vault_core.AppendResult]] = field(default_factory=list)
    failures: list[BaseException] = field(default_factory=list)

    def batch(self, n: int) -> list[Message]:
        size = 1 + (n * 7 + len(self.name)) % 12
        return [
            Message(f"{self.name}-{n}-{i}", f"{self.name}:{n}:{i}".encode() * (1 + i % 5))
            for i in range(size)
        ]

    def run(self, until: threading.Event, limit: int = 1000) -> None:
        with VaultClient(self.url, timeout=240, attempts=60) as client:
            for n in range(limit):
                if until.is_set():
                    return
                messages = self.batch(n)
                try:
                    self.acked.append(
                        (messages, client.publish(self.stream, messages, idempotency_key=f"{self.name}-{n}"))
                    )
                except Exception as error:  # a call that failed for good
                    self.failures.append(error)
                    return


def check_exactly_once(store: vault_core.Store, producers: list[Producer]) -> None:
    """Every acknowledged message in its stream once, at its acknowledged offsets, in each
    producer's order; nothing else in the streams; every stream verifies."""
    for stream in {p.stream for p in producers}:
        stored = {m.offset: m for m in store.reader(stream).replay()}
        expected = 0
        for producer in (p for p in producers if p.stream == stream):
            assert not producer.failures, producer.failures
            last = -1
            for messages, result in producer.acked:
                assert [(stored[o].key, stored[o].value) for o in result.offsets] == messages
                assert result.offsets[0] > last  # acknowledged in order, stored in order
                last = result.offsets[-1]
                expected += len(messages)
        assert len(stored) == expected, f"{stream}: {len(stored)} stored, {expected} acknowledged"
        store.reader(stream).verify()


@contextlib.contextmanager
def producing(host: DurableHost, prefix: str, count: int, streams: list[str]) -> Iterator[list[Producer]]:
    """`count` producers publish to the streams in turn while the block runs; when it ends they
    stop after the call in flight, and every one of them must have stopped."""
    until = threading.Event()
    producers = [Producer(f"{prefix}{n}", streams[n % len(streams)], host.url) for n in range(count)]
    threads = [threading.Thread(target=p.run, args=(until,)) for p in producers]
    for thread in threads:
        thread.start()
    try:
        yield producers
    finally:
        until.set()
        for thread in threads:
            thread.join(300)
    assert not any(thread.is_alive() for thread in threads)


@pytest.fixture
def settings_for(azurite):
    def make(**extra: str) -> tuple[dict[str, str], vault_core.Store]:
        container = f"faults-{next(_containers)}"
        values = app_settings(azurite, container, VAULT_LEASE_SECONDS=str(LEASE_SECONDS), **extra)
        return values, vault_core.open_store(azurite.connection_string, container=container)

    return make


def owner(host: DurableHost, stream: str) -> AppInstance:
    instance = host.owner_of(protocol.entity_instance_id("stream_writer", stream))
    assert instance is not None
    return instance


def publish(host: DurableHost, stream: str, key: str) -> tuple[Producer, float]:
    """One batch from a producer of its own; returns it and how long the append took."""
    producer = Producer(key, stream, host.url)
    started = time.monotonic()
    with VaultClient(host.url, timeout=120) as client:
        messages = [Message(key, key.encode())]
        producer.acked.append((messages, client.publish(stream, messages, idempotency_key=key)))
    return producer, time.monotonic() - started


def test_after_the_owner_is_killed_the_next_append_does_not_wait_out_the_lease(settings_for):
    values, store = settings_for()
    with DurableHost(values, instances=2, settings=scaled(0.05)) as host:
        host.settle()
        publish(host, "killed", "before")  # the owner now holds the stream's 60 s lease
        host.kill(owner(host, "killed"), replace=False)
        _, took = publish(host, "killed", "after")
        assert took < LEASE_SECONDS / 2, f"{took:.1f} s"
        assert [m.key for m in store.reader("killed").replay()] == ["before", "after"]
        assert not host.errors, host.events


def test_a_frozen_owner_is_taken_over_and_resumed_writes_nothing(settings_for):
    """The owner freezes (SIGSTOP) while its entity is appending; another instance takes the
    stream over; resumed, the frozen one is fenced: nothing it writes becomes visible."""
    values, store = settings_for()
    with DurableHost(values, instances=2, settings=scaled(0.05)) as host:
        host.settle()
        with producing(host, "f", 4, ["frozen"]) as producers:
            entity = protocol.entity_instance_id("stream_writer", "frozen")
            frozen = None
            for _ in range(400):  # freeze it mid-batch: its entity work item running
                time.sleep(0.01)
                current = host.owner_of(entity)
                if current is not None and entity in current.active:
                    frozen = current
                    host.freeze(frozen)
                    break
            assert frozen is not None, "the entity never ran"
            acked = sum(len(p.acked) for p in producers)
            solo, took = publish(host, "frozen", "while-frozen")
            assert took < LEASE_SECONDS / 2, f"{took:.1f} s"
            time.sleep(1)
            host.thaw(frozen)
            time.sleep(2)  # its work item finishes: fenced, its checkpoint refused
        assert sum(len(p.acked) for p in producers) > acked
        check_exactly_once(store, [*producers, solo])
        assert not host.errors, host.events


def test_a_worker_hung_mid_batch_loses_and_duplicates_nothing(settings_for):
    """The worker process hangs (SIGSTOP) while it runs the entity's batch and whatever else, and
    its host goes on: the first invocation past functionTimeout makes the host restart the
    worker, failing the others; the runtime runs their work again, the orchestrations retry on
    durable timers, and every append commits once."""
    values, store = settings_for(VAULT_WAIT_SECONDS="0")  # producers poll: no long HTTP invocations
    with DurableHost(values, instances=1, settings=scaled(0.05, function_timeout=3.0)) as host:
        with producing(host, "h", 4, ["hung"]) as producers:
            instance = host.instances[0]
            for _ in range(4000):  # hang it while it runs the entity's batch
                time.sleep(0.005)
                if instance.in_flight["stream_writer"] >= 1:
                    host.hang_worker(instance)
                    break
            deadline = time.monotonic() + 60
            while host.stats["worker restarts"] == 0 and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(3)
        assert host.stats["worker restarts"] >= 1
        check_exactly_once(store, producers)
        assert not host.errors, host.events


def test_an_entity_batch_past_the_function_timeout_loses_and_duplicates_nothing(settings_for):
    """An entity batch that runs past functionTimeout (its appends slowed here, as by a storage
    account that stopped answering): the host answers every operation of the batch with its
    timeout error and restarts the worker; the appends that did commit are found by their batch
    ids when the orchestrations retry, and every append commits once."""
    values, store = settings_for(
        VAULT_WAIT_SECONDS="0", STANDIN_SLOW_CALLS="vault_core.functions.entity:_append_round=5*1"
    )
    with DurableHost(values, instances=1, settings=scaled(0.05, function_timeout=3.0)) as host:
        with producing(host, "t", 4, ["timed-out"]) as producers:
            deadline = time.monotonic() + 60
            while host.stats["entity batches timed out"] == 0 and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(3)
        assert host.stats["entity batches timed out"] >= 1 and host.stats["worker restarts"] >= 1
        assert sum(len(p.acked) for p in producers) >= 4
        check_exactly_once(store, producers)
        assert not host.errors, host.events


def test_producers_under_kills_freezes_and_partition_moves_lose_and_duplicate_nothing(settings_for):
    """16 producers on 4 streams for about 25 s while, every second or two, a partition moves,
    an instance is killed (and replaced), frozen for a few seconds, added or removed."""
    values, store = settings_for()
    rng = random.Random(20261125)
    with DurableHost(values, instances=3, settings=scaled(0.05)) as host:
        with producing(host, "p", 16, [f"chaos-{n}" for n in range(4)]) as producers:
            actions: list[str] = []
            frozen: list[AppInstance] = []
            deadline = time.monotonic() + 25
            while time.monotonic() < deadline:
                time.sleep(rng.uniform(1.0, 2.0))
                for instance in frozen:
                    host.thaw(instance)
                frozen.clear()
                live = [i for i in host.live() if i.running.is_set()]
                action = rng.choice(["move", "move", "kill", "freeze", "scale"])
                if action == "move":
                    stream = rng.choice(producers).stream
                    index = protocol.partition_of(
                        protocol.entity_instance_id("stream_writer", stream), host.settings.partition_count
                    )
                    host.move_partition(index, rng.choice(live))
                elif action == "kill" and len(live) > 1:
                    host.kill(rng.choice(live), replace=True)
                elif action == "freeze" and len(live) > 1:
                    frozen.append(rng.choice(live))
                    host.freeze(frozen[-1])
                elif action == "scale":
                    if len(live) < 4:
                        host.add_instance()
                    else:
                        host.remove_instance(rng.choice(live))
                actions.append(action)
            for instance in frozen:
                host.thaw(instance)
        check_exactly_once(store, producers)
        assert sum(len(p.acked) for p in producers) >= 16
        assert {"move", "kill", "freeze"} <= set(actions), actions
        assert host.stats["partition moves"] >= 1 and host.stats["instances killed"] >= 1
        assert not host.errors, host.events
