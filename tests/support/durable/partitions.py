"""The table partition manager and the queue pollers of one app instance, as DTFx's Azure
Storage provider runs them: each partition (a control queue) is owned through a lease that must be
renewed; a new instance steals cooperatively (the owner drains, then releases); an owned queue is
polled with DTFx's backoff and its messages grouped per orchestration or entity instance."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tests.support.durable.taskhub import QueueMessage
from tests.support.durable.work import Stopped, WorkItem

if TYPE_CHECKING:
    from tests.support.durable.host import AppInstance


class Backoff:
    """DTFx's queue polling backoff: no wait at first, then 50 ms + (0.8-1.2) x 2^(n-1) x 50 ms
    per empty poll, at most `maximum`; reset by any dequeue or local enqueue."""

    def __init__(self, maximum: float) -> None:
        self.maximum, self.empty_polls = maximum, 0
        self.wake = threading.Event()

    def wait(self) -> None:
        if self.empty_polls:
            delay = 0.05 + random.uniform(0.8, 1.2) * 2 ** (self.empty_polls - 1) * 0.05
            self.wake.wait(min(delay, self.maximum))
            self.wake.clear()
        self.empty_polls += 1

    def reset(self) -> None:
        self.empty_polls = 0
        self.wake.set()


@dataclass
class Partition:
    """A partition this instance owns and polls."""

    index: int
    stop: threading.Event = field(default_factory=threading.Event)
    backoff: Backoff | None = None
    draining: bool = False


class PartitionManager:
    """The partitions one instance owns, the threads that keep their leases and poll them."""

    def __init__(self, instance: AppInstance) -> None:
        self.instance, self.host, self.settings = instance, instance.host, instance.settings
        self.owned: dict[int, Partition] = {}

    def manage(self) -> None:
        try:
            while self.instance.alive and not self.host.stopping.is_set():
                self.instance.gate()
                waiting = self._balance()
                self._renew_active()
                interval = self.settings.acquire_interval
                self.host.stopping.wait(min(interval, 1.0) if waiting else interval)
        except Stopped:
            pass

    def _balance(self) -> bool:
        """One pass of the partition manager; True while it waits for a partition or drains."""
        hub, now, waiting = self.host.hub, time.monotonic(), False
        hub.round_trip("table read", "table write")  # the partition table: read, then renew
        with hub.lock:
            rows = hub.partitions
            for index in list(self.owned):
                if rows[index].owner != self.instance.name:  # lost it (expired and claimed elsewhere)
                    self._stop_polling(index)
            for index, row in enumerate(rows):
                if row.owner == self.instance.name:
                    row.expires_at = now + self.settings.lease_interval  # renewed, draining or not
                    if row.next_owner not in (None, self.instance.name) or self.host.leaving(self.instance):
                        waiting = True
                        self._drain(index)
                elif (
                    row.owner is None and row.next_owner in (None, self.instance.name)
                ) or row.expires_at <= now:
                    # Free for us, or its lease ran out: the owner stopped renewing, or the one who
                    # asked for it never came to take it.
                    if self.host.leaving(self.instance):
                        continue
                    row.owner, row.next_owner = self.instance.name, None
                    row.expires_at = now + 2 * self.settings.lease_interval
                    self.host.claims.append((now, index, self.instance.name))
                    self._start_polling(index)
            if self.host.leaving(self.instance):
                return True
            live = {r.owner for r in rows if r.owner and r.expires_at > now} | {self.instance.name}
            mine = sum(r.owner == self.instance.name for r in rows)
            average = len(rows) // len(live)
            counts = Counter(r.owner for r in rows if r.owner)
            if mine < average and not any(r.next_owner == self.instance.name for r in rows):
                for row in rows:
                    if (
                        row.owner != self.instance.name
                        and row.owner is not None
                        and row.next_owner is None
                        and counts[row.owner] > average
                    ):
                        row.next_owner = self.instance.name  # ask the owner to hand it over
                        waiting = True
                        break
            return waiting or any(r.next_owner == self.instance.name for r in rows)

    def _start_polling(self, index: int) -> None:
        partition = Partition(index, backoff=Backoff(self.settings.max_polling_interval))
        self.owned[index] = partition
        threading.Thread(
            target=self._poll, args=(partition,), name=f"{self.instance.name}-poll-{index}", daemon=True
        ).start()

    def _stop_polling(self, index: int) -> list[QueueMessage]:
        """Stops polling a partition; returns the prefetched messages nobody started on."""
        partition = self.owned.pop(index, None)
        if partition is not None:
            partition.stop.set()
        with self.instance.lock:
            dropped = [item for key, item in self.instance.pending.items() if item.partition == index]
            for key in [key for key, item in self.instance.pending.items() if item.partition == index]:
                del self.instance.pending[key]
        return [m for item in dropped for m in item.messages]

    def _drain(self, index: int) -> None:
        partition = self.owned.get(index)
        if partition is None or partition.draining:
            return
        partition.draining = True
        threading.Thread(target=self._release, args=(index,), daemon=True).start()

    def _release(self, index: int) -> None:
        """Drains a partition (stop dequeuing, wait for its running work items, at most
        drain_timeout), then releases its lease. Prefetched batches are abandoned."""
        try:
            abandoned = self._stop_polling(index)
            self.host.hub.release(abandoned)
            deadline = time.monotonic() + self.settings.drain_timeout
            while time.monotonic() < deadline:
                self.instance.gate()
                with self.instance.lock:
                    if not any(item.partition == index for item in self.instance.active.values()):
                        break
                time.sleep(0.05)
            self.instance.gate()
            with self.host.hub.lock:
                row = self.host.hub.partitions[index]
                if row.owner == self.instance.name:
                    row.owner = None
            self.host.stats["partition moves"] += 1
        except Stopped:
            pass

    def _renew_active(self) -> None:
        """The dispatcher keeps the messages of running work items hidden."""
        with self.instance.lock:
            messages = [m for item in self.instance.active.values() for m in item.messages]
        self.host.hub.renew(messages, self.settings.visibility_timeout)

    def _poll(self, partition: Partition) -> None:
        hub = self.host.hub
        assert partition.backoff is not None
        try:
            while not partition.stop.is_set() and not self.host.stopping.is_set():
                self.instance.gate()
                with self.instance.lock:
                    buffered = sum(len(item.messages) for item in self.instance.pending.values())
                if buffered >= self.settings.buffer_threshold:
                    partition.stop.wait(1.0)
                    continue
                messages = hub.dequeue(
                    partition.index,
                    self.settings.control_queue_batch_size,
                    self.settings.visibility_timeout,
                )
                if partition.stop.is_set():
                    hub.release(messages, delay=0)
                    return
                if messages:
                    partition.backoff.empty_polls = 0
                    with self.instance.lock:
                        for message in messages:
                            item = self.instance.pending.setdefault(
                                message.instance, WorkItem(partition.index, [])
                            )
                            item.messages.append(message)
                    self.instance.dispatch()
                else:
                    partition.backoff.wait()
        except Stopped:
            pass

    def wake(self, index: int) -> None:
        """A message this instance enqueued to a partition it polls wakes that poller at once."""
        partition = self.owned.get(index)
        if partition is not None and partition.backoff is not None:
            partition.backoff.reset()
