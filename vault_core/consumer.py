"""Consumer groups: a consumer reads a stream from its group's checkpoint and moves the checkpoint
past each batch once the batch is handled. A consumer that dies in between gets that batch again
(at-least-once); none is ever skipped. A group has one active consumer per stream: with
`exclusive=True` a consumer claims the stream for the group, and a second one waits for it instead
of handling the same batches. `group_lags` tells how far behind each group is."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NamedTuple

from . import metrics
from .checkpoints import Checkpoint, Checkpoints
from .errors import InvalidPosition, OwnershipLost, check_int
from .reader import ReadResult, StreamReader

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger("vault.consumer")


class Consumer:
    """Reads `reader`'s stream as the group of `checkpoints`, from its checkpoint, or from `start`
    while the group has none.

    `exclusive`: claim the stream for the group before reading (and hold the claim, renewed in the
    background every `lease_seconds` / 3, until the iteration ends); while another consumer of
    the group holds it, wait. If this consumer stalls past `lease_seconds` (frozen, cut off), its
    claim runs out, another takes over, and this one gets OwnershipLost."""

    def __init__(
        self,
        reader: StreamReader,
        checkpoints: Checkpoints,
        *,
        start: int = 0,
        exclusive: bool = False,
        lease_seconds: float = 30.0,
    ) -> None:
        if check_int("start", start) < 0:
            raise ValueError(f"start must not be negative, got {start}")
        if not 1 <= lease_seconds <= 3600:
            raise ValueError(f"lease_seconds must be 1 to 3600, got {lease_seconds}")
        self.reader = reader
        self.checkpoints = checkpoints
        self.start = start
        self.exclusive = exclusive
        self.lease_seconds = lease_seconds
        self.owner = uuid.uuid4().hex  # this consumer, in the group's claims
        self._checkpoint: Checkpoint | None = None
        self._loaded = False

    def __repr__(self) -> str:
        return f"Consumer({self.checkpoints.group!r}, {self.reader.stream!r})"

    @property
    def position(self) -> int:
        """Where the group resumes: its checkpoint as this consumer last read or saved it, or
        `start` if it has none."""
        if not self._loaded:
            self._load()
        return self._checkpoint.position if self._checkpoint else self.start

    def batches(self, *, follow: bool = False, poll_interval: float = 1.0) -> Iterator[ReadResult]:
        """The stream's batches from the group's checkpoint on (as `StreamReader.batches`). The
        checkpoint moves past a batch when the caller comes back for the next one, or the
        iteration ends; not when the caller stops early, so a batch it did not finish comes again.
        CheckpointConflict if another consumer of the group moved the checkpoint meanwhile."""
        with self._claim(poll_interval) as claim:
            self._load()  # after the claim: the previous owner's last checkpoint
            position, first = self.position, self.reader.first_position()
            if position < first:
                log.warning(
                    "group %r: stream %r was trimmed past its checkpoint %d; %d bytes the group never "
                    "read are gone, and it resumes from the stream's start, %d",
                    self.checkpoints.group,
                    self.reader.stream,
                    position,
                    first - position,
                    first,
                )
                position = first
            batches = self.reader.batches(position, follow=follow, poll_interval=poll_interval)
            try:
                for batch in batches:
                    claim.check()
                    yield batch
                    if batch.next_position != self.position:
                        claim.check()
                        self._checkpoint = self.checkpoints.save(
                            self.reader.stream, batch.next_position, expected=self._checkpoint
                        )
            finally:
                batches.close()  # type: ignore[attr-defined]  # stops its read-ahead thread now

    def commit(self, position: int) -> None:
        """Move the group's checkpoint to `position` now: an offset inside the batch in hand, when
        only the messages before it were handled. CheckpointConflict as for `batches`."""
        self._checkpoint = self.checkpoints.save(self.reader.stream, position, expected=self._checkpoint)

    def _load(self) -> None:
        self._checkpoint = self.checkpoints.get(self.reader.stream)
        self._loaded = True

    @contextlib.contextmanager
    def _claim(self, poll_interval: float) -> Iterator[_Claim]:
        claim = _Claim(self) if self.exclusive else _Claim(None)
        claim.take(poll_interval)
        try:
            yield claim
        finally:
            claim.give_up()


class _Claim:
    """An exclusive consumer's claim on its stream, renewed on a thread of its own."""

    def __init__(self, consumer: Consumer | None) -> None:
        self.consumer = consumer
        self.lost = False
        self._stop = threading.Event()
        self._renewing: threading.Thread | None = None

    def take(self, poll_interval: float) -> None:
        """Wait until the group's claim on the stream is ours."""
        consumer = self.consumer
        if consumer is None:
            return
        stream = consumer.reader.stream
        while not consumer.checkpoints.claim(stream, consumer.owner, consumer.lease_seconds):
            time.sleep(min(poll_interval, consumer.lease_seconds / 3))
        self._renewing = threading.Thread(target=self._renew, name=f"claim-{stream}", daemon=True)
        self._renewing.start()

    def _renew(self) -> None:
        consumer = self.consumer
        assert consumer is not None
        while not self._stop.wait(consumer.lease_seconds / 3):
            try:
                held = consumer.checkpoints.claim(
                    consumer.reader.stream, consumer.owner, consumer.lease_seconds
                )
            except Exception:  # storage out of reach: the next round tries again
                continue
            if not held:
                self.lost = True
                return

    def check(self) -> None:
        if self.lost:
            consumer = self.consumer
            assert consumer is not None
            raise OwnershipLost(
                f"consumer group {consumer.checkpoints.group!r} gave stream {consumer.reader.stream!r} to "
                f"another consumer: this one's claim ran out (it stalled past {consumer.lease_seconds:g} s). "
                "Stop this consumer; the group goes on from its checkpoint"
            )

    def give_up(self) -> None:
        consumer = self.consumer
        if consumer is None:
            return
        self._stop.set()
        if self._renewing is not None:
            self._renewing.join()
        if not self.lost:
            with contextlib.suppress(Exception):  # it runs out by itself otherwise
                consumer.checkpoints.release(consumer.reader.stream, consumer.owner)


class GroupLag(NamedTuple):
    """How far a consumer group is behind on one stream."""

    group: str
    stream: str
    checkpoint: int  # the next position the group reads
    position: int  # the stream's committed length
    lag_bytes: int  # what the group has yet to read: position - checkpoint, from the stream's start
    oldest_unread: datetime | None  # when the first message the group has not read was appended
    trimmed_bytes: int = 0  # what the group never read and never will: trimmed below its checkpoint

    def behind(self, now: datetime | None = None) -> float:
        """Seconds between the oldest unread message and `now` (0 when caught up)."""
        if self.oldest_unread is None:
            return 0.0
        return max(0.0, ((now or datetime.now(UTC)) - self.oldest_unread).total_seconds())


def group_lags(store: Store, group: str | None = None) -> list[GroupLag]:
    """Every consumer group of the store (or only `group`), with, per stream it reads, its
    checkpoint, the stream's position and how far behind it is, in bytes and in time."""
    lags = []
    for name in [group] if group is not None else store.consumer_groups():
        with store.checkpoints(name) as checkpoints:
            for checkpoint in checkpoints.all():
                with store.reader(checkpoint.stream) as reader:
                    position = reader.position()
                    first = reader.first_position()
                    resumes = max(checkpoint.position, first)  # a trimmed checkpoint: from the start
                    oldest = None
                    if resumes < position:
                        with contextlib.suppress(InvalidPosition):  # a checkpoint set by hand, say
                            page = reader.read(resumes, max_messages=1)
                            oldest = page.messages[0].timestamp if page.messages else None
                lags.append(
                    GroupLag(
                        name,
                        checkpoint.stream,
                        checkpoint.position,
                        position,
                        max(0, position - resumes),
                        oldest,
                        max(0, first - checkpoint.position),
                    )
                )
    return lags


def observe_group_lags(store: Store) -> Callable[[], None]:
    """Report every consumer group's lag on each stream it reads in `store` as the metrics
    `vault.consumer.lag.bytes` and `.seconds`, read whenever they are collected; returns what
    stops it."""
    return metrics.observe_lags(
        lambda: [(lag.group, lag.stream, lag.lag_bytes, lag.behind()) for lag in group_lags(store)]
    )
