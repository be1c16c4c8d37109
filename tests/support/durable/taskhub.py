"""What the Azure Storage provider keeps in storage for a task hub, standing in for its queues and
tables: control queues (one per partition) with at-least-once delivery, the instances with their
history or entity state (each checkpoint conditional on an ETag), and the partition table. Every
call pays one storage round trip of latency, outside the lock, as a request to Azure Storage does,
plus the time its bytes take at a blob's or a table's throughput; every queue, table and blob
operation it stands for is counted (`operations`), as Azure bills them. It survives any worker's
death, as storage does.

An entity's checkpoint stores its scheduler state as the extension does (protocol.scheduler_state):
in the History table's ExecutionStarted row and in the Instances row, each a table property
limited to 60 KiB of UTF-16; above that the state goes gzipped to a blob in the task hub's
large-message container, and the previous one is deleted."""

from __future__ import annotations

import copy
import gzip
import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tests.support.durable.protocol import TABLE_PROPERTY_LIMIT, partition_of, scheduler_state, table_bytes

# Bytes a second one request moves to or from a blob or a table (a single-request figure, well
# under an account's limits).
THROUGHPUT = 50e6


@dataclass
class QueueMessage:
    """A control-queue message: an event for one instance. Dequeuing hides it for the visibility
    timeout and gives it a new receipt; only the holder of the current receipt may delete it."""

    seq: int
    instance: str
    event: dict[str, Any]
    size: int
    visible_at: float
    dequeue_count: int = 0
    receipt: int = 0


@dataclass
class Record:
    """An instance as stored: an orchestration (Instances row and History) or an entity (its
    scheduler state: state, queued operations, and the request ids it already received)."""

    instance: str
    name: str
    etag: int = 0
    # orchestrations
    input_text: str | None = None
    status: str = "Pending"
    output: Any = None
    custom_status: Any = None
    history: list[dict[str, Any]] = field(default_factory=list)
    execution_id: str = ""
    created: float = 0.0
    updated: float = 0.0
    # entities
    exists: bool = False
    state: str | None = None
    queue: list[dict[str, Any]] = field(default_factory=list)
    # The message sorter: the last request time seen from each orchestration, kept for the
    # reorder window, and the horizon below which entries are forgotten.
    received: dict[str, float] = field(default_factory=dict)
    horizon: float = 0.0
    state_blob: bool = False  # the last saved state went to a blob (deleted at the next save)


@dataclass
class PartitionRow:
    owner: str | None = None
    next_owner: str | None = None
    expires_at: float = 0.0


class TaskHub:
    def __init__(self, partition_count: int, latency: float) -> None:
        self.partition_count = partition_count
        self.latency = latency
        self.lock = threading.RLock()
        self.queues: list[list[QueueMessage]] = [[] for _ in range(partition_count)]
        self.records: dict[str, Record] = {}
        self.partitions = [PartitionRow() for _ in range(partition_count)]
        self.spilled = 0  # payloads over the queue or table limits (stored as blobs on Azure)
        self.operations: Counter[str] = Counter()  # storage operations by kind ("queue put", ...)
        # UTF-8 bytes of each checkpoint's saved state, by entity
        self.entity_states: dict[str, list[int]] = {}
        self._seq = itertools.count(1)
        self._receipts = itertools.count(1)

    def round_trip(self, *operations: str, size: int = 0) -> None:
        """One storage round trip (the operations go out in parallel) moving `size` bytes."""
        with self.lock:
            self.operations.update(operations)
        wait = (self.latency if self.latency else 0.0) + size / THROUGHPUT
        if wait:
            time.sleep(wait)

    # --- control queues

    def enqueue(self, messages: list[tuple[str, dict[str, Any], int, float]]) -> list[int]:
        """Adds messages (instance, event, size, delay) to their partitions' queues, all at once
        (DTFx sends a checkpoint's messages in parallel: one round trip); returns the partitions."""
        self.round_trip(*["queue put"] * len(messages), size=max((m[2] for m in messages), default=0))
        partitions = []
        with self.lock:
            for instance, event, size, delay in messages:
                partition = partition_of(instance, self.partition_count)
                message = QueueMessage(next(self._seq), instance, event, size, time.monotonic() + delay)
                self.queues[partition].append(message)
                partitions.append(partition)
        return partitions

    def dequeue(self, partition: int, count: int, visibility: float) -> list[QueueMessage]:
        self.round_trip("queue get")
        now = time.monotonic()
        taken: list[QueueMessage] = []
        with self.lock:
            for message in self.queues[partition]:
                if len(taken) == count:
                    break
                if message.visible_at <= now:
                    message.visible_at = now + visibility
                    message.dequeue_count += 1
                    message.receipt = next(self._receipts)
                    taken.append(copy.copy(message))
        return taken

    def delete(self, messages: list[QueueMessage]) -> None:
        if not messages:
            return
        self.round_trip(*["queue delete"] * len(messages))
        with self.lock:
            for message in messages:
                queue = self.queues[partition_of(message.instance, self.partition_count)]
                for index, stored in enumerate(queue):
                    if stored.seq == message.seq:
                        if stored.receipt == message.receipt:  # else: someone dequeued it since
                            del queue[index]
                        break

    def release(self, messages: list[QueueMessage], delay: float | None = None) -> None:
        """Makes messages visible again after `delay` seconds (abandon), or, with no delay given,
        after DTFx's backoff for abandoned messages: 2^dequeue count seconds, at most 600."""
        if not messages:
            return
        self.round_trip(*["queue update"] * len(messages))
        now = time.monotonic()
        with self.lock:
            for message in messages:
                for stored in self.queues[partition_of(message.instance, self.partition_count)]:
                    if stored.seq == message.seq and stored.receipt == message.receipt:
                        wait = delay if delay is not None else min(2.0**stored.dequeue_count, 600.0)
                        stored.visible_at = now + wait
                        break

    def renew(self, messages: list[QueueMessage], visibility: float) -> None:
        """Keeps messages of a running work item hidden (the dispatcher renews them)."""
        now = time.monotonic()
        with self.lock:
            self.operations["queue update"] += len(messages)
            for message in messages:
                for stored in self.queues[partition_of(message.instance, self.partition_count)]:
                    if stored.seq == message.seq and stored.receipt == message.receipt:
                        stored.visible_at = max(stored.visible_at, now + visibility)
                        break

    def pending(self, partition: int) -> int:
        with self.lock:
            return len(self.queues[partition])

    # --- instances

    def load(self, instance: str) -> Record | None:
        self.round_trip("table read")
        with self.lock:
            record = self.records.get(instance)
            return copy.deepcopy(record) if record is not None else None

    def peek(self, instance: str) -> Record | None:
        """For the client API: the stored record, without copying it."""
        with self.lock:
            return self.records.get(instance)

    def save(self, record: Record, loaded_etag: int | None, history_bytes: int = 0) -> bool:
        """The checkpoint: stores the record if nobody else stored it since it was loaded
        (`loaded_etag` None: it must not exist). False when another worker's checkpoint won.
        An orchestration writes its new history rows (`history_bytes`) and its Instances row; an
        entity its scheduler state, twice (see the module's docstring)."""
        operations, size = ["table write", "table write"], history_bytes
        if record.instance.startswith("@"):
            text = scheduler_state(record)
            with self.lock:
                self.entity_states.setdefault(record.instance, []).append(len(text.encode()))
            row_bytes = table_bytes(text)
            was_blob, record.state_blob = record.state_blob, row_bytes > TABLE_PROPERTY_LIMIT
            if record.state_blob:
                operations.append("blob put")
                size += len(gzip.compress(text.encode(), compresslevel=1))
            else:
                size += 2 * row_bytes  # in the History row and the Instances row
            if was_blob:
                operations.append("blob delete")
        self.round_trip(*operations, size=size)
        with self.lock:
            current = self.records.get(record.instance)
            if (current.etag if current is not None else None) != loaded_etag:
                return False
            record.etag = (loaded_etag or 0) + 1
            record.updated = time.time()
            record.created = record.created or record.updated
            self.records[record.instance] = copy.deepcopy(record)
            return True

    def create(self, record: Record, replace_finished: bool) -> str | None:
        """A new orchestration instance, unless one with that id is pending or running (its status
        is returned then); a finished one is replaced if `replace_finished`."""
        self.round_trip("table write")
        with self.lock:
            current = self.records.get(record.instance)
            if current is not None and (current.status in ("Pending", "Running") or not replace_finished):
                return current.status
            record.etag = (current.etag if current is not None else 0) + 1
            record.created = record.updated = time.time()
            self.records[record.instance] = record
            return None

    def purge(self, instances: list[str]) -> int:
        self.round_trip("table read", *["table write"] * len(instances))
        with self.lock:
            return sum(self.records.pop(instance, None) is not None for instance in instances)
