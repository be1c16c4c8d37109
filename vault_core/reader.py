"""Reading a stream straight from storage: no server, no lease, never above the committed position."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable, Iterator
from datetime import datetime
from itertools import chain
from typing import NamedTuple

from . import format as fmt
from . import framing
from .errors import InvalidPosition, check_int
from .framing import Frame, LogFrames, not_a_boundary
from .seek import seek_time
from .stores.base import StreamLog
from .verification import VerifyReport, verify_log

# Slack beyond max_bytes that one read() fetches, so batch headers and keys fit in one request.
READ_SLACK = 64 * 1024


class ReadResult(NamedTuple):
    messages: list[fmt.StoredMessage]
    next_position: int  # where the next read continues


class StreamStatus(NamedTuple):
    stream: str
    position: int  # committed length
    size: int  # bytes the log takes on storage
    last_append: datetime | None  # None if nothing was ever appended


class StreamReader:
    """Reads one stream. Every message returned comes from a batch whose checksum was verified."""

    def __init__(self, stream: str, source: StreamLog) -> None:
        self.stream = stream
        self._source = source
        self._frames = LogFrames(stream, source)

    @property
    def log(self) -> StreamLog:
        """The log this reader reads, as the store gives it: raw bytes, for tools that copy them."""
        return self._source

    def position(self) -> int:
        """The committed length of the stream now; 0 if it does not exist."""
        return self.commit_record().position

    def first_position(self) -> int:
        """Where the stream starts now: 0, or where trimming left its oldest segment. A read from
        0 starts here; a read from below it (but above 0) is PositionTrimmed."""
        return self._frames.first_position()

    def segment_bases(self) -> list[int]:
        """Where each of the stream's segments starts, oldest first ([0] for a stream that never
        rolled nor was trimmed)."""
        return self._frames.segment_bases()

    def commit_record(self) -> fmt.CommitRecord:
        """The stream's current commit record (position, last append time, ...)."""
        return self._frames.commit_record()

    def latest_of(self, batch_ids: Iterable[str]) -> str | None:
        """Of these batch ids, the one appended last, if the stream still remembers it (its last
        1,024 batch ids), else None: where a producer that numbers its batches resumes."""
        wanted: dict[int, list[bytes]] = {}
        for batch_id in batch_ids:
            encoded = fmt.check_batch_id(batch_id)
            wanted.setdefault(fmt.batch_id_hash(encoded), []).append(encoded)
        for id_hash, start in reversed(fmt.ring_entries(self.commit_record().ring)):
            if id_hash in wanted:
                _, header = self._frames.batch(start)
                if header.batch_id in wanted[id_hash]:  # else another id with the same hash
                    return header.batch_id.decode()
        return None

    def status(self) -> StreamStatus:
        commit = self.commit_record()
        last = fmt.from_ms(commit.timestamp_ms) if commit.position else None
        return StreamStatus(self.stream, commit.position, self._source.size(), last)

    def read(
        self, position: int = 0, *, max_messages: int = 1000, max_bytes: int = 4 * 1024 * 1024
    ) -> ReadResult:
        """Messages from `position` (0, an offset or a position the vault returned): at most
        `max_messages`, and no more key and value bytes than `max_bytes` beyond the first message."""
        _check_limit("max_messages", max_messages)
        _check_limit("max_bytes", max_bytes)
        end = self.position()
        messages: list[fmt.StoredMessage] = []
        size = 0
        # One request sized to the answer, read in this thread: a read is small and quick.
        chunks = self._frames.chunks(
            position, end, first_chunk=min(max_bytes + READ_SLACK, framing.REPLAY_CHUNK), ahead=False
        )
        for batch, header in self._decoded(position, chunks):
            for message in batch:
                size += len(message.key) + len(message.value)
                if messages and (len(messages) >= max_messages or size > max_bytes):
                    return ReadResult(messages, message.offset)
                messages.append(message)
            if len(messages) >= max_messages or size >= max_bytes:
                return ReadResult(messages, header.end)
        return ReadResult(messages, end)

    def replay(self, position: int = 0, *, end: int | None = None) -> Replay:
        """Every message from `position` up to `end` (default: the position when called). Batches
        are fetched and verified in a background thread while earlier ones are decoded; memory
        stays bounded by a few chunks."""
        committed = self.position()
        end = committed if end is None else end
        if not 0 <= check_int("end", end) <= committed:
            raise InvalidPosition(f"end {end} is outside stream {self.stream!r} (0 to {committed})")
        return self._replay(position, end)

    def _replay(self, position: int, end: int) -> Replay:
        return Replay(batch for batch, _header in self._decoded(position, self._frames.chunks(position, end)))

    def follow(self, position: int = 0, *, poll_interval: float = 1.0) -> Iterator[fmt.StoredMessage]:
        """Every committed message from `position` on, in order, exactly once; then waits for new
        ones, polling every `poll_interval` seconds. Runs until the caller stops iterating."""
        for batch in self.batches(position, follow=True, poll_interval=poll_interval):
            yield from batch.messages

    def batches(
        self, position: int = 0, *, follow: bool = False, poll_interval: float = 1.0
    ) -> Iterator[ReadResult]:
        """The stored batches from `position` (from inside one: the rest of it), each as its
        messages and the position after it. Up to the position when called; with `follow`, on as
        new batches are committed, polling every `poll_interval` seconds, until the caller stops."""
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval}")
        while True:
            end = self.position()
            if end != position:
                chunks = self._frames.chunks(position, end)
                try:
                    for batch, header in self._decoded(position, chunks):
                        yield ReadResult(batch, header.end)
                finally:
                    chunks.close()
                position = end
            elif follow:
                time.sleep(poll_interval)
            else:
                return

    def headed_batches(
        self, start: int = 0, end: int | None = None
    ) -> Iterator[tuple[fmt.BatchHeader, list[fmt.StoredMessage]]]:
        """The stored batches from the batch start `start` to `end` (default: the position when
        called), each with its header: its position, time and batch id."""
        end = self.position() if end is None else end
        chunks = self._frames.chunks(start, end)
        try:
            for batch, header in self._decoded(start, chunks):
                yield header, batch
        finally:
            chunks.close()

    def seek_time(self, when: datetime) -> int:
        """The offset of the first message appended at or after `when` (an aware datetime; naive
        means UTC), or the end of the stream if there is none. Batch timestamps never decrease, so
        this is a binary search over the log: a few small reads however long the stream is."""
        return seek_time(self._frames, when)

    def verify(self, *, progress: Callable[[int], None] | None = None) -> VerifyReport:
        """Read the whole committed stream and check everything: each batch's checksum, position
        and records (lengths, back-pointers, UTF-8 keys), that timestamps never go back, and that
        the commit's batch-id ring names batches that exist. Raises CorruptDataError at the first
        damage. `progress(position)` is called as the check advances."""
        return verify_log(self._frames, progress)

    def chunks(self, start: int, end: int) -> Generator[list[Frame], None, None]:
        """The verified batches from `start` (0 or a batch start) to `end` (at most the committed
        position), as stored: a list of (buffer, where in it, header) per chunk read, fetched
        ahead in a background thread. For tools that copy a log's bytes (mirror); close() stops
        the read-ahead."""
        return self._frames.chunks(start, end)

    def _decoded(
        self, position: int, chunks: Iterator[list[Frame]]
    ) -> Iterator[tuple[list[fmt.StoredMessage], fmt.BatchHeader]]:
        """The messages of each batch, those before `position` left out."""
        for buffer, at, header in chain.from_iterable(chunks):
            if header.position < position:
                batch = fmt.decode_records(self.stream, buffer, at, header, position)
                if not batch or batch[0].offset != position:
                    raise not_a_boundary(self.stream, position)
            else:
                batch = fmt.decode_records(self.stream, buffer, at, header)
            yield batch, header

    def close(self) -> None:
        self._source.close()

    def __enter__(self) -> StreamReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Replay(Iterator[fmt.StoredMessage]):
    """The messages of a replay. Stopping early with close() (or a `with` block, or by dropping
    it) stops its read-ahead thread."""

    def __init__(self, batches: Generator[list[fmt.StoredMessage], None, None]) -> None:
        self._batches = batches
        self._messages = chain.from_iterable(batches)

    def __iter__(self) -> Iterator[fmt.StoredMessage]:
        return self._messages  # a for loop runs at the speed of itertools.chain

    def __next__(self) -> fmt.StoredMessage:
        return next(self._messages)

    def close(self) -> None:
        self._batches.close()

    def __enter__(self) -> Replay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_limit(name: str, value: int) -> None:
    if check_int(name, value) < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
