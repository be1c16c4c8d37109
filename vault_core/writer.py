"""The single writer of a stream: appends batches atomically, exactly once per batch id."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import NamedTuple

from . import format as fmt
from .errors import BatchIdConflict, FencedError, VaultError
from .reader import read_batch
from .stores.base import LogWriter


class AppendResult(NamedTuple):
    position: int  # committed length of the stream after the batch
    offsets: list[int]  # one per message, in order


class StreamWriter:
    """Appends to one stream while owning it. Use as a context manager, or call close().

    An append writes the batch's data pages, makes them durable, then writes the next commit slot
    (fenced by the lease and the log's ETag). Only then does it return: a crash at any point leaves
    the stream at its last acknowledged position. Safe to share between threads: appends queue.
    """

    def __init__(self, stream: str, log: LogWriter) -> None:
        self.stream = stream
        self._log = log
        self._lock = threading.Lock()
        self._closed = False
        self._fenced: FencedError | None = None
        try:
            self._load()
        except BaseException:
            log.close()
            raise

    def _load(self) -> None:
        header = self._log.read(0, 2 * fmt.SLOT_SIZE)
        if not header.strip(b"\0"):
            # A new log: commit "empty" into slot A first, so that a torn first real commit (into
            # slot B) leaves a valid slot behind rather than two unreadable ones.
            self._log.commit(fmt.SLOTS[0], fmt.encode_commit(fmt.EMPTY_COMMIT))
        commit = fmt.decode_commit(self.stream, header)
        self._commit = commit
        # Batch id hash -> starts of the batches in the ring with that hash (collisions are rare,
        # not impossible: every candidate is checked against the id stored in its batch).
        self._batch_starts: dict[int, list[int]] = {}
        for id_hash, start in fmt.ring_entries(commit.ring):
            self._batch_starts.setdefault(id_hash, []).append(start)
        at = fmt.data_at(commit.position)
        tail_length = at % fmt.PAGE
        self._tail = self._log.read(at - tail_length, tail_length) if tail_length else b""
        if len(self._tail) != tail_length:
            raise fmt.CorruptDataError(self.stream, commit.position, "log is shorter than committed")
        self._in_doubt = False

    @property
    def position(self) -> int:
        """The committed length of the stream."""
        return self._commit.position

    def append(self, messages: Sequence[fmt.Message], *, batch_id: str | None = None) -> AppendResult:
        """Append messages as one batch: all become visible at once, or none do.

        With a `batch_id`, an append retried with the same id (by this writer, a later one, or
        after a crash) returns the first result and appends nothing; BatchIdConflict if the id was
        used for different messages. The last 1,024 batch ids of the stream are remembered.
        """
        id_bytes = fmt.check_batch_id(batch_id)
        with self._lock:
            if self._closed:
                raise VaultError(f"the writer of stream {self.stream!r} is closed")
            if self._fenced is not None:
                raise self._fenced
            try:
                if self._in_doubt:
                    self._log.refresh()
                    self._load()
                if id_bytes:
                    earlier = self._find(id_bytes, messages)
                    if earlier is not None:
                        return earlier
                return self._append(messages, id_bytes)
            except FencedError as error:
                self._fenced = error
                raise

    def _append(self, messages: Sequence[fmt.Message], batch_id: bytes) -> AppendResult:
        commit = self._commit
        timestamp = max(fmt.now_ms(), commit.timestamp_ms)  # never decreases within a stream
        at = fmt.data_at(commit.position)
        batch = fmt.encode_batch(
            messages,
            position=commit.position,
            timestamp_ms=timestamp,
            batch_id=batch_id,
            prefix=self._tail,
            align=fmt.PAGE,
        )
        end = commit.position + batch.length
        id_hash = fmt.batch_id_hash(batch_id) if batch_id else 0
        ring = fmt.ring_add(commit.ring, id_hash, commit.position) if batch_id else commit.ring
        new_commit = fmt.Commit(commit.counter + 1, end, timestamp, ring)
        # From the first byte written until the commit is known, a failure leaves the outcome
        # unknown: the next append re-reads the log before doing anything.
        self._in_doubt = True
        self._log.write(at - len(self._tail), batch.buffer)
        self._log.commit(fmt.SLOTS[new_commit.counter % 2], fmt.encode_commit(new_commit))
        self._in_doubt = False
        self._commit = new_commit
        if batch_id:
            self._batch_starts.setdefault(id_hash, []).append(commit.position)
            if len(commit.ring) == fmt.RING_CAPACITY * fmt.RING_ENTRY.size:  # the oldest fell out
                oldest_hash, oldest_start = fmt.RING_ENTRY.unpack_from(commit.ring)
                starts = self._batch_starts[oldest_hash]
                starts.remove(oldest_start)
                if not starts:
                    del self._batch_starts[oldest_hash]
        data_end = len(self._tail) + batch.length
        tail_length = fmt.data_at(end) % fmt.PAGE
        self._tail = bytes(batch.buffer[data_end - tail_length : data_end])
        return AppendResult(end, batch.offsets)

    def _find(self, batch_id: bytes, messages: Sequence[fmt.Message]) -> AppendResult | None:
        """The result of an earlier batch with this id, if it is still remembered."""
        for start in self._batch_starts.get(fmt.batch_id_hash(batch_id), ()):
            buffer, header = read_batch(self.stream, self._log, start)
            if header.batch_id != batch_id:  # a hash collision: a different id
                continue
            stored = fmt.decode_records(self.stream, buffer, 0, header)
            if not _same_messages(stored, messages):
                raise BatchIdConflict(
                    f"batch id {batch_id.decode()!r} was already used on stream {self.stream!r} "
                    "for different messages"
                )
            return AppendResult(header.end, [m.offset for m in stored])
        return None

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._log.close()

    def __enter__(self) -> StreamWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _same_messages(stored: list[fmt.StoredMessage], messages: Sequence[fmt.Message]) -> bool:
    try:
        return len(stored) == len(messages) and all(
            s.key == key and s.value == value for s, (key, value) in zip(stored, messages, strict=False)
        )
    except (TypeError, ValueError):
        return False
