"""The single writer of a stream: appends batches atomically, exactly once per batch id."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from . import format as fmt
from . import metrics, retention
from .errors import BatchIdConflict, CorruptDataError, FencedError, PositionTrimmed, VaultError, check_int
from .framing import LogFrames
from .segments import SegmentedLog

log = logging.getLogger("vault.writer")

# A group commit takes queued batches until its write reaches this size; the rest wait their turn.
GROUP_BYTES = 16 * 1024 * 1024
# A stream rolls into a new segment once its newest holds this much: most streams never do.
DEFAULT_SEGMENT_BYTES = 1024**4
MIN_SEGMENT_BYTES = 4096
MAX_SEGMENT_BYTES = 4 * 1024**4  # a page blob holds 8 TiB: room for the last group commit and more


def check_segment_bytes(segment_bytes: int) -> int:
    if not MIN_SEGMENT_BYTES <= check_int("segment_bytes", segment_bytes) <= MAX_SEGMENT_BYTES:
        raise ValueError(
            f"segment_bytes must be {MIN_SEGMENT_BYTES} to {MAX_SEGMENT_BYTES} (4 TiB), got {segment_bytes}"
        )
    return segment_bytes


class AppendResult(NamedTuple):
    position: int  # committed length of the stream after the batch
    offsets: list[int]  # one per message, in order


class Batch(NamedTuple):
    """One batch for `StreamWriter.append_all`."""

    messages: Sequence[fmt.Message]
    batch_id: str | None = None


class StreamWriter:
    """Appends to one stream while owning it. Use as a context manager, or call close().

    An append writes the batch's data pages, makes them durable, then writes the next commit slot
    (fenced by the lease). Only then does it return: a crash at any point leaves the stream at its
    last acknowledged position. Safe to share between threads: batches appended meanwhile by other
    threads are committed together with one data write and one commit, and commits are pipelined:
    while one group's commit is on its way to storage, the next group's data is written (past the
    position that commit makes, so neither can spoil the other); its commit follows once the one
    before it is durable.

    One thread at a time holds the writer's *turn*: it takes every queued batch, writes their
    data, waits for the commit in flight, and hands its own commit on; it sends that commit after
    giving up the turn, so the next thread can write the next group's data meanwhile.
    """

    def __init__(self, stream: str, log: SegmentedLog, *, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> None:
        self.stream = stream
        self._log = log
        self._segment_bytes = check_segment_bytes(segment_bytes)
        self._frames = LogFrames(stream, log)
        # Guards the queue, the turn and every request's and commit's completion, which waiting
        # threads are woken for.
        self._changed = threading.Condition(threading.Lock())
        self._queue: list[_Append] = []
        self._turn_taken = False
        self._in_flight: _Commit | None = None  # the commit being sent, by the thread that led it
        self._closed = False
        self._fenced: FencedError | None = None
        # A write or commit failed, so what the log holds is unknown until it is read again.
        self._in_doubt = False
        try:
            self._load()
        except BaseException:
            log.discard() if log.created else log.close()
            raise

    def _load(self) -> None:
        slots = self._frames.commit_slots()
        if not slots.strip(b"\0"):
            # A new log: commit "empty" into slot A first, so that a torn first real commit (into
            # slot B) leaves a valid slot behind rather than two unreadable ones.
            empty = fmt.encode_commit_record(fmt.EMPTY_COMMIT_RECORD)
            self._log.write_commit_slot(fmt.COMMIT_SLOTS[0], empty)
        commit = fmt.decode_commit_record(self.stream, slots)
        self._commit = commit  # the commit the next group builds on: the last one handed on
        self._durable = commit  # the last commit known to be durable
        # Batch id hash -> starts of the batches in the ring with that hash (collisions are rare,
        # not impossible: every candidate is checked against the id stored in its batch).
        self._batch_starts: dict[int, list[int]] = {}
        self._index_ring(fmt.ring_entries(commit.ring), b"")
        at = fmt.data_at(commit.position)
        if commit.position and self._log.size() < at:
            # Appending after a hole would bury the loss under new commits.
            raise CorruptDataError(self.stream, commit.position, "log is shorter than committed")
        tail_length = at % fmt.PAGE
        self._tail = self._log.read(at - tail_length, tail_length) if tail_length else b""
        if len(self._tail) != tail_length:
            raise CorruptDataError(self.stream, commit.position, "log is shorter than committed")
        self._in_doubt = False

    @property
    def position(self) -> int:
        """The committed length of the stream."""
        return self._durable.position

    def append(self, messages: Sequence[fmt.Message], *, batch_id: str | None = None) -> AppendResult:
        """Append messages as one batch: all become visible at once, or none do.

        With a `batch_id`, an append retried with the same id (by this writer, a later one, or
        after a crash) returns the first result and appends nothing; BatchIdConflict if the id was
        used for different messages. The last 1,024 batch ids of the stream are remembered.
        """
        # Encoded here, outside the lock, while the leader of a group commit waits on storage.
        return self.append_prepared(fmt.prepare_batch(messages, fmt.check_batch_id(batch_id)))

    def append_prepared(self, batch: fmt.PreparedBatch) -> AppendResult:
        """Append a batch already encoded (`format.prepare_batch`, or the HTTP API's binary body
        taken straight to records), with the batch id it was encoded with; as `append`."""
        request = _Append(batch)
        started = time.perf_counter()
        self._run([request])
        metrics.timed(self.stream, started)
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    def append_all(self, batches: Sequence[Batch]) -> list[AppendResult | Exception]:
        """Append several batches together, in order: as few data writes and commits as their
        size allows (one, up to 16 MiB), each batch still atomic, exactly once per batch id, and
        with its own outcome: its AppendResult, or the error that refused it (BatchIdConflict,
        a message over a limit, or a storage error or FencedError that stopped its commit).
        """
        prepared: list[_Append | Exception] = []
        for messages, batch_id in batches:
            try:
                prepared.append(_Append.prepare(messages, batch_id))
            except (ValueError, TypeError) as error:  # refused alone, before anything is stored
                prepared.append(error)
        queued = [item for item in prepared if isinstance(item, _Append)]
        started = time.perf_counter()
        self._run(queued)
        metrics.timed(self.stream, started, len(queued))
        return [item.outcome() if isinstance(item, _Append) else item for item in prepared]

    def _run(self, requests: list[_Append]) -> None:
        """Queue the requests, and lead group commits while some of them are still queued (the
        thread that has the turn takes every queued request along) until all are done."""
        with self._changed:
            self._queue.extend(requests)
        while True:
            with self._changed:
                while not all(request.done for request in requests):
                    if not self._turn_taken and not all(request.taken for request in requests):
                        self._turn_taken = True
                        break
                    self._changed.wait()
                else:
                    return
            try:
                handed_on = self._lead()
            finally:
                self._end_turn()
            if handed_on is not None:
                self._send(handed_on)

    @contextlib.contextmanager
    def _turn(self) -> Iterator[None]:
        """The writer to itself: no group is being prepared meanwhile (a commit may be in flight)."""
        with self._changed:
            while self._turn_taken:
                self._changed.wait()
            self._turn_taken = True
        try:
            yield
        finally:
            self._end_turn()

    def _end_turn(self) -> None:
        with self._changed:
            self._turn_taken = False
            self._changed.notify_all()

    def _lead(self) -> _Commit | None:
        """Take the queue and write its group's data; the commit to send, if there is one."""
        with self._changed:
            group, self._queue = self._queue, []
            for request in group:
                request.taken = True
        try:
            if self._closed:
                raise VaultError(f"the writer of stream {self.stream!r} is closed")
            if self._fenced is not None:
                raise self._fenced
            if self._in_doubt:
                self._settle()
            return self._append(group)
        except BaseException as error:
            self._fail(group, error)
            if not isinstance(error, Exception):
                raise
            return None

    def _fail(self, requests: list[_Append], error: BaseException) -> None:
        if isinstance(error, FencedError):
            with self._changed:
                first = self._fenced is None
                self._fenced = self._fenced or error
            if first:
                metrics.writer_fenced.add(1, {"stream": self.stream})
        for request in requests:
            request.finish(error=error)

    def _append(self, group: list[_Append]) -> _Commit | None:
        """Write the data of the batches of `group` in one write, and make the commit that
        acknowledges them, to send once the one in flight is durable. Requests it leaves for the
        next group are removed from `group` and put back at the head of the queue."""
        commit = self._commit
        timestamp = max(fmt.now_ms(), commit.timestamp_ms)  # never decreases within a stream
        position, ring = commit.position, commit.ring
        buffers: list[bytes | bytearray] = [self._tail]
        added: list[tuple[int, int]] = []  # (batch id hash, batch start) of the ids this commit adds
        messages = 0
        first_with_id: dict[bytes, _Append] = {}
        for index, request in enumerate(group):
            if position - commit.position >= GROUP_BYTES:
                with self._changed:
                    for left in group[index:]:
                        left.taken = False
                    self._queue[:0] = group[index:]
                del group[index:]
                break
            try:
                if request.batch_id:
                    twin = first_with_id.get(request.batch_id)
                    if twin is not None:  # the same batch twice in one group
                        request.follow(twin, self.stream)
                        continue
                    earlier = self._find(request.batch_id, request.prepared)
                    if earlier is not None:  # done once the commits before are durable
                        request.result = earlier
                        continue
            except BatchIdConflict as error:  # this batch is refused; the others go on
                request.finish(error=error)
                continue
            offsets = fmt.seal_batch(request.prepared, position=position, timestamp_ms=timestamp)
            if request.batch_id:
                first_with_id[request.batch_id] = request
                id_hash = fmt.batch_id_hash(request.batch_id)
                ring = fmt.ring_add(ring, id_hash, position)
                added.append((id_hash, position))
            position += len(request.prepared.buffer)
            messages += request.prepared.message_count
            request.result = AppendResult(position, offsets)
            buffers.append(request.prepared.buffer)
        if len(buffers) == 1:  # nothing new to store: done once what was found is durable
            self._drain()
            for request in group:
                request.finish()
            return None
        written = len(self._tail) + position - commit.position
        buffers.append(bytes(-written % fmt.PAGE))  # whole pages
        try:
            self._log.write(fmt.data_at(commit.position) - len(self._tail), buffers)
        except BaseException:
            self._in_doubt = True  # some of its pages may be stored: the log is read again
            raise
        self._commit = fmt.CommitRecord(commit.counter + 1, position, timestamp, ring)
        self._index_ring(added, commit.ring)
        self._tail = _last_bytes(buffers[:-1], fmt.data_at(position) % fmt.PAGE)
        self._drain()  # the commit before this one is durable, or this group fails with it
        self._in_flight = _Commit(self._commit, group, len(buffers) - 2, messages, position - commit.position)
        return self._in_flight

    def _send(self, handed_on: _Commit) -> None:
        """Write a commit (the one before it is durable) and finish its requests."""
        try:
            slot = fmt.COMMIT_SLOTS[handed_on.record.counter % 2]
            self._log.write_commit_slot(slot, fmt.encode_commit_record(handed_on.record))
        except BaseException as error:
            self._in_doubt = True  # it may have landed: the next append reads the log again
            handed_on.error = error
            self._fail(handed_on.group, error)
            if not isinstance(error, Exception):
                raise
        else:
            self._durable = handed_on.record
            metrics.appended(self.stream, handed_on.batches, handed_on.messages, handed_on.bytes)
            for request in handed_on.group:
                request.finish()
        finally:
            with self._changed:
                handed_on.finished = True
                self._changed.notify_all()
        if handed_on.error is None and self._log.rolls:
            self._roll_when_full()

    def _drain(self) -> None:
        """Wait (holding the turn) for the commit in flight; raise its error if it failed."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            with self._changed:
                while not in_flight.finished:
                    self._changed.wait()
            if in_flight.error is not None:
                raise in_flight.error

    def _settle(self) -> None:
        """Holding the turn: nothing in flight, and the log read again if a failure left it in
        doubt."""
        with contextlib.suppress(Exception):  # it failed its own requests already
            self._drain()
        if self._in_doubt:
            self._log.refresh()
            self._load()

    def _roll_when_full(self) -> None:
        """Roll once the newest segment holds `segment_bytes`. The batches are acknowledged
        already: a roll that fails leaves the writer in doubt, and its next append finishes it."""
        if self._durable.position - self._log.base < self._segment_bytes:
            return
        with self._turn():
            if self._closed or self._fenced is not None:
                return
            try:
                self._settle()
                if self._commit.position - self._log.base >= self._segment_bytes:
                    self._roll()
            except Exception as error:
                log.warning("stream %r did not roll into a new segment yet: %s", self.stream, error)

    def _roll(self) -> None:
        """Continue in a new segment. The batches are acknowledged already: a roll that fails
        leaves the writer in doubt, and its next append finishes the roll first."""
        self._in_doubt = True
        self._commit = self._log.roll(self._commit, then=self._keep_retention)
        self._in_doubt = False

    def _keep_retention(self) -> None:
        """Trim what the stream's retention policy lets go, now that a segment was sealed (in
        the sealing thread, while appends go on). Only logged if it fails: the stream is whole
        either way, and the next roll tries again."""
        try:
            policy = retention.load(self._log.backend, self.stream)
            if not policy.keeps_everything:
                self._log.trim(policy.trim_point(self.stream, self._log))
        except Exception as error:
            log.warning("stream %r: its retention policy was not applied this time: %s", self.stream, error)

    @property
    def segment_base(self) -> int:
        """Where the stream's newest segment, the one appended to, starts."""
        return self._log.base

    def first_position(self) -> int:
        """Where the stream starts now: 0, or the first position trimming left."""
        return self._log.first_position()

    def trim(self, before: int) -> int:
        """Remove the sealed segments that lie wholly below `before` (never the newest): their
        messages are gone for every reader. The stream's first position after, which readers
        and consumer groups below it are moved to."""
        with self._turn():
            if self._closed:
                raise VaultError(f"the writer of stream {self.stream!r} is closed")
            self._settle()
            # This writer's own seal in progress first, so that what it trims is up to `before`.
            # (Not in SegmentedLog.trim: the sealing thread trims too, for retention.)
            self._log.settle()
            return self._log.trim(before)

    def _index_ring(self, added: list[tuple[int, int]], old_ring: bytes) -> None:
        """Index the batch ids a commit added to the ring, forgetting those that fell out of it."""
        for id_hash, start in added:
            self._batch_starts.setdefault(id_hash, []).append(start)
        overflow = len(old_ring) // fmt.RING_ENTRY.size + len(added) - fmt.RING_CAPACITY
        if overflow > 0:
            entries = fmt.ring_entries(old_ring) + added
            for id_hash, start in entries[:overflow]:
                starts = self._batch_starts[id_hash]
                starts.remove(start)
                if not starts:
                    del self._batch_starts[id_hash]

    def find(self, batch_id: str) -> tuple[AppendResult, list[fmt.StoredMessage]] | None:
        """The result and messages of the batch appended with this id, if the stream still
        remembers it (the last 1,024 batch ids), else None."""
        batch_id_bytes = fmt.check_batch_id(batch_id)
        if not batch_id_bytes:
            raise ValueError("find needs a batch id")
        with self._turn():
            self._settle()  # what it finds is committed
            return self._stored(batch_id_bytes)

    def _stored(self, batch_id: bytes) -> tuple[AppendResult, list[fmt.StoredMessage]] | None:
        for start in self._batch_starts.get(fmt.batch_id_hash(batch_id), ()):
            found = self._batch_at(start)
            if found is None or found[1].batch_id != batch_id:  # trimmed, or a hash collision
                continue
            buffer, header = found
            stored = fmt.decode_records(self.stream, buffer, 0, header)
            return AppendResult(header.end, [m.offset for m in stored]), stored
        return None

    def _find(self, batch_id: bytes, batch: fmt.PreparedBatch) -> AppendResult | None:
        """The result of an earlier batch with this id, if it is still remembered; BatchIdConflict
        if its records are not the same (records do not depend on where a batch lies)."""
        for start in self._batch_starts.get(fmt.batch_id_hash(batch_id), ()):
            found = self._batch_at(start)
            if found is None or found[1].batch_id != batch_id:  # trimmed, or a hash collision
                continue
            buffer, header = found
            if not _same_records(memoryview(buffer)[: header.length], batch.buffer):
                raise _conflict(batch_id, self.stream)
            return AppendResult(header.end, [header.position + offset for offset in batch.offsets])
        return None

    def _batch_at(self, start: int) -> tuple[bytes, fmt.BatchHeader] | None:
        """The batch a ring entry points to; None if trimming removed it (its id is forgotten)."""
        try:
            return self._frames.batch(start)
        except PositionTrimmed:
            return None

    def close(self) -> None:
        """Give up the stream. A stream this writer created and appended nothing to (its first
        append refused, say) is removed: a refused append leaves nothing behind."""
        with self._turn():
            if not self._closed:
                with contextlib.suppress(Exception):  # it failed its own requests already
                    self._drain()
                self._closed = True
                if self._log.created and self._durable.position == 0 and not self._in_doubt:
                    self._log.discard()
                else:
                    self._log.close()

    def __enter__(self) -> StreamWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Append:
    """One caller's batch, queued for a group commit."""

    __slots__ = ("batch_id", "done", "error", "prepared", "result", "taken", "twin")

    def __init__(self, prepared: fmt.PreparedBatch) -> None:
        self.prepared = prepared
        self.batch_id = fmt.prepared_batch_id(prepared)
        self.result: AppendResult | None = None
        self.error: BaseException | None = None
        self.twin: _Append | None = None
        self.taken = False  # by the thread whose turn it is, for its group
        self.done = False

    @classmethod
    def prepare(cls, messages: Sequence[fmt.Message], batch_id: str | None) -> _Append:
        """Check and encode a batch (ValueError or TypeError if it is wrong)."""
        return cls(fmt.prepare_batch(messages, fmt.check_batch_id(batch_id)))

    def outcome(self) -> AppendResult | Exception:
        """Once done: the result, or the error that refused the batch."""
        if isinstance(self.error, Exception):
            return self.error
        assert self.result is not None
        return self.result

    def follow(self, twin: _Append, stream: str) -> None:
        """Share the outcome of an identical batch (same id) in the same group."""
        if not _same_records(twin.prepared.buffer, self.prepared.buffer):
            raise _conflict(self.batch_id, stream)
        self.twin = twin

    def finish(self, result: AppendResult | None = None, *, error: BaseException | None = None) -> None:
        if self.done:
            return
        if self.twin is not None:
            result, error = self.twin.result, error or self.twin.error
        self.result = result or self.result
        self.error = error
        self.done = True


class _Commit:
    """A group's commit, handed on by the thread that wrote its data, to send once the commit
    before it is durable."""

    __slots__ = ("batches", "bytes", "error", "finished", "group", "messages", "record")

    def __init__(
        self, record: fmt.CommitRecord, group: list[_Append], batches: int, messages: int, size: int
    ) -> None:
        self.record = record
        self.group = group
        self.batches, self.messages, self.bytes = batches, messages, size
        self.error: BaseException | None = None
        self.finished = False


def _same_records(one: bytes | bytearray | memoryview, other: bytes | bytearray | memoryview) -> bool:
    """Whether two batches with the same batch id hold the same records: the bytes after their
    headers and ids, compared without copies."""
    start = fmt.BATCH_HEADER.size + one[10]
    return len(one) == len(other) and memoryview(one)[start:] == memoryview(other)[start:]


def _last_bytes(buffers: list[bytes | bytearray], count: int) -> bytes:
    """The last `count` bytes of the buffers laid end to end."""
    parts: list[bytes | bytearray] = []
    for buffer in reversed(buffers):
        if count <= 0:
            break
        parts.append(buffer[-count:])
        count -= len(parts[-1])
    return b"".join(reversed(parts))


def _conflict(batch_id: bytes, stream: str) -> BatchIdConflict:
    return BatchIdConflict(
        f"batch id {batch_id.decode()!r} was already used on stream {stream!r} for different messages"
    )
