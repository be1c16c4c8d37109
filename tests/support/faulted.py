"""What the storage-fault tests share: the faults, producers that retry, and the checks that
every acknowledged batch is stored once, in order, and that the faults were met and counted."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

import vault_core
from tests.support.storage_proxy import FAULTS, Faults, StorageProxy
from vault_core import Message

# About 5% of requests faulted, of every kind, and some held a while.
FAULTY = Faults(reset=0.015, drop=0.015, busy=0.01, timeout=0.01, delay=0.05, delay_seconds=(0.02, 0.2))
ATTEMPTS = 20  # a producer's, for one batch: bounded


def messages(batch_id: str) -> list[Message]:
    return [Message(batch_id, f"{batch_id}/{i}".encode() * 20) for i in range(1 + len(batch_id) % 4)]


def retried(call: Callable[[], object]) -> object:
    """`call` until it gets through, as an operator re-running a command would: bounded."""
    for attempt in range(ATTEMPTS):
        try:
            return call()
        except Exception:
            if attempt == ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def produce(producers: int, batches: int, append: Callable[[str], object]) -> dict[str, list[str]]:
    """Each producer appends its batches one after another, retrying a refused one with the same
    batch id; each producer's acknowledged batch ids, in order."""
    acknowledged: dict[str, list[str]] = {}

    def producer(name: str) -> None:
        ids = acknowledged.setdefault(name, [])
        for n in range(batches):
            batch_id = f"{name}-{n}"
            retried(lambda batch_id=batch_id: append(batch_id))
            ids.append(batch_id)

    threads = [threading.Thread(target=producer, args=(f"p{p}",)) for p in range(producers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return acknowledged


def assert_once_in_order(store: vault_core.Store, stream: str, acknowledged: dict[str, list[str]]) -> None:
    stored = [(m.key, m.value) for m in store.reader(stream).replay()]
    keys = [key for key, _value in stored]
    order, counts = list(dict.fromkeys(keys)), Counter(keys)
    for ids in acknowledged.values():
        wanted = set(ids)
        assert [key for key in order if key in wanted] == ids
    everything = [batch_id for ids in acknowledged.values() for batch_id in ids]
    assert sorted(order) == sorted(everything)  # nothing unacknowledged is there
    assert all(counts[batch_id] == len(messages(batch_id)) for batch_id in everything)  # whole, once
    assert stored == [(m.key, m.value) for batch_id in order for m in messages(batch_id)]
    assert store.reader(stream).verify().batches == len(order)


def assert_faulted(proxy: StorageProxy, at_least: int = 10) -> None:
    """The run met storage faults, of several kinds: it tested something."""
    kinds = sum(proxy.faults[fault] > 0 for fault in FAULTS)
    assert proxy.faulted() >= at_least and kinds >= min(3, at_least), proxy.faults


def assert_counted(before: dict[str, float], after: dict[str, float], proxy: StorageProxy) -> None:
    """Every fault the proxy injected was counted in vault.storage.faults, as its kind."""
    counted = {kind: after.get(kind, 0) - before.get(kind, 0) for kind in after}
    assert counted.get("throttled", 0) == proxy.faults["busy"]
    assert counted.get("timeout", 0) == proxy.faults["timeout"]
    lost = counted.get("connection", 0) + counted.get("response", 0)
    assert lost == proxy.faults["reset"] + proxy.faults["drop"]
