"""Reading a stream straight from storage: no server, no lease, never above the committed position."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from datetime import datetime
from itertools import chain
from queue import Empty, Full, Queue
from typing import NamedTuple, TypeVar

from . import format as fmt
from .errors import CorruptDataError, InvalidPosition, check_int
from .stores.base import LogSource, read_batch, read_commit_record

# A replay's first request is small, so decoding starts early; each next one doubles up to the last.
FIRST_CHUNK = 256 * 1024
REPLAY_CHUNK = 16 * 1024 * 1024
# Slack beyond max_bytes that one read() fetches, so batch headers and keys fit in one request.
READ_SLACK = 64 * 1024
# A time search probes while its range is wider than this, then walks the batch headers in it.
SEEK_SPAN = 1024 * 1024
# Bytes a time search reads at first when looking for the next batch start after a probe.
SEEK_PROBE = 64 * 1024
# What an InvalidPosition for a position that is not a record boundary says to do.
BOUNDARY_HINT = (
    " (a message's offset, or where a read stopped), or find one by its time (seek_time, --from-time)"
)

Frame = tuple[bytes, int, fmt.BatchHeader]  # a verified batch: buffer, where in it, its header


class ReadResult(NamedTuple):
    messages: list[fmt.StoredMessage]
    next_position: int  # where the next read continues


class StreamStatus(NamedTuple):
    stream: str
    position: int  # committed length
    size: int  # bytes the log takes on storage
    last_append: datetime | None  # None if nothing was ever appended


class VerifyReport(NamedTuple):
    stream: str
    position: int  # the committed position, verified up to
    batches: int
    messages: int


class StreamReader:
    """Reads one stream. Every message returned comes from a batch whose checksum was verified."""

    def __init__(self, stream: str, source: LogSource) -> None:
        self.stream = stream
        self._source = source

    @property
    def log(self) -> LogSource:
        """The log this reader reads, as the store gives it: raw bytes, for tools that copy them."""
        return self._source

    def position(self) -> int:
        """The committed length of the stream now; 0 if it does not exist."""
        return self.commit_record().position

    def commit_record(self) -> fmt.CommitRecord:
        """The stream's current commit record (position, last append time, ...)."""
        return read_commit_record(self.stream, self._source)

    def latest_of(self, batch_ids: Iterable[str]) -> str | None:
        """Of these batch ids, the one appended last, if the stream still remembers it (its last
        1,024 batch ids), else None: where a producer that numbers its batches resumes."""
        wanted: dict[int, list[bytes]] = {}
        for batch_id in batch_ids:
            encoded = fmt.check_batch_id(batch_id)
            wanted.setdefault(fmt.batch_id_hash(encoded), []).append(encoded)
        for id_hash, start in reversed(fmt.ring_entries(self.commit_record().ring)):
            if id_hash in wanted:
                _, header = read_batch(self.stream, self._source, start)
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
        chunks = self._chunks(
            position, end, first_chunk=min(max_bytes + READ_SLACK, REPLAY_CHUNK), ahead=False
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
        if isinstance(end, bool) or not isinstance(end, int) or not 0 <= end <= committed:
            raise InvalidPosition(f"end {end} is outside stream {self.stream!r} (0 to {committed})")
        return self._replay(position, end)

    def _replay(self, position: int, end: int) -> Replay:
        return Replay(batch for batch, _header in self._decoded(position, self._chunks(position, end)))

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
                chunks = self._chunks(position, end)
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
        chunks = self._chunks(start, end)
        try:
            for batch, header in self._decoded(start, chunks):
                yield header, batch
        finally:
            chunks.close()

    def seek_time(self, when: datetime) -> int:
        """The offset of the first message appended at or after `when` (an aware datetime; naive
        means UTC), or the end of the stream if there is none. Batch timestamps never decrease, so
        this is a binary search over the log: a few small reads however long the stream is."""
        target = fmt.to_ms(when)
        commit = self.commit_record()
        end = commit.position
        if end == 0 or commit.timestamp_ms < target:
            return end
        first = self._header(0, end)
        if first.timestamp_ms >= target:
            return self._first_offset(0, end)
        # Invariants: `low` starts a batch older than the target; `high` starts one at or after it
        # (or is the end); no batch starts in [top, high), so probes stay below `top`.
        low, high, top = 0, end, end
        while top - low > SEEK_SPAN:
            middle = (low + top) // 2
            found = self._next_batch(middle, top, end)
            if found is None:
                top = middle
            elif found.timestamp_ms < target:
                low = found.position
            else:
                high = top = found.position
        for header in self._headers(low, high, end):
            if header.timestamp_ms >= target:
                return self._first_offset(header.position, end)
        return self._first_offset(high, end)

    def _first_offset(self, position: int, end: int) -> int:
        """The offset of the first message of the batch at `position`, which must be wholly in the
        log: a time search answers only where a read can start."""
        header = self._header(position, end)
        if not self._source.read(fmt.data_at(header.end - 1), 1):
            raise fmt.log_cut_short(self.stream, position)
        return position + header.records_at

    def _header(self, position: int, end: int) -> fmt.BatchHeader:
        head = self._source.read(fmt.data_at(position), fmt.BATCH_HEADER.size + fmt.MAX_BATCH_ID_BYTES)
        if len(head) < min(fmt.BATCH_HEADER.size, end - position):
            raise fmt.log_cut_short(self.stream, position)
        return self._batch_header(head, 0, position, end)

    def _headers(self, position: int, stop: int, end: int) -> Iterator[fmt.BatchHeader]:
        """The headers of the batches from the batch start `position` to `stop`, read a window at
        a time: each batch's length leads to the next, so only the first must be known. (Only
        their fixed part: a batch id may be cut short.) If the log ends, the error names the
        first batch not wholly in it, as every read's does."""
        buffer, base = b"", position
        previous: fmt.BatchHeader | None = None
        while position < stop:
            at = position - base
            if at + fmt.BATCH_HEADER.size > len(buffer):
                base, at = position, 0
                buffer = self._source.read(fmt.data_at(position), min(SEEK_SPAN, stop - position) + 64)
                if len(buffer) < min(fmt.BATCH_HEADER.size, end - position):
                    # The log ends in this header, unless none of it is there and the batch before
                    # it already lacks its last byte.
                    cut = position
                    if previous and not buffer and not self._source.read(fmt.data_at(position - 1), 1):
                        cut = previous.position
                    raise fmt.log_cut_short(self.stream, cut)
            header = self._batch_header(buffer, at, position, end)
            yield header
            previous = header
            position = header.end

    def _next_batch(self, position: int, limit: int, end: int) -> fmt.BatchHeader | None:
        """The first batch that starts in [position, limit): found by its magic bytes, and taken
        only if its header names its own position and its checksum and records verify (the
        magic may also occur inside a value)."""
        window = SEEK_PROBE
        while position < limit:
            length = min(window, limit - position + fmt.BATCH_HEADER.size)
            data = self._source.read(fmt.data_at(position), length)
            at = data.find(fmt.BATCH_MAGIC)
            while at != -1 and position + at < limit:
                header = self._verified_header(data, at, position + at, end)
                if header is not None:
                    return header
                at = data.find(fmt.BATCH_MAGIC, at + 1)
            if len(data) < length:
                return None
            position += len(data) - len(fmt.BATCH_MAGIC) + 1  # a magic cut in two is found next time
            window = min(2 * window, REPLAY_CHUNK)
        return None

    def _verified_header(self, data: bytes, at: int, position: int, end: int) -> fmt.BatchHeader | None:
        try:
            header = fmt.decode_batch_header(self.stream, data, at, position)
            if header.end > end:
                return None
            if at + header.length > len(data):
                data, at = self._source.read(fmt.data_at(position), header.length), 0
            fmt.verify_batch(self.stream, data, at, header)
            fmt.decode_checked(self.stream, data, at, header)
        except CorruptDataError:
            return None
        return header

    def verify(self, *, progress: Callable[[int], None] | None = None) -> VerifyReport:
        """Read the whole committed stream and check everything: each batch's checksum, position
        and records (lengths, back-pointers, UTF-8 keys), that timestamps never go back, and that
        the commit's batch-id ring names batches that exist. Raises CorruptDataError at the first
        damage. `progress(position)` is called as the check advances."""
        commit = self.commit_record()
        ring = {start: id_hash for id_hash, start in fmt.ring_entries(commit.ring)}
        batches = messages = last_timestamp = 0
        for frames in self._chunks(0, commit.position):
            for buffer, at, header in frames:
                messages += len(fmt.decode_checked(self.stream, buffer, at, header))
                if header.timestamp_ms < last_timestamp:
                    raise CorruptDataError(self.stream, header.position, "timestamp goes back in time")
                id_hash = ring.pop(header.position, None)
                if id_hash is not None and id_hash != fmt.batch_id_hash(header.batch_id):
                    raise CorruptDataError(
                        self.stream, header.position, "the commit's batch-id ring names another batch id"
                    )
                last_timestamp = header.timestamp_ms
                batches += 1
            if progress is not None:
                progress(frames[-1][2].end)
        if ring:
            raise CorruptDataError(
                self.stream, min(ring), "the commit's batch-id ring names a position where no batch starts"
            )
        if commit.position and commit.timestamp_ms != last_timestamp:
            raise CorruptDataError(self.stream, 0, "the commit's time is not the last batch's time")
        return VerifyReport(self.stream, commit.position, batches, messages)

    def chunks(self, start: int, end: int) -> Generator[list[Frame], None, None]:
        """The verified batches from `start` (0 or a batch start) to `end` (at most the committed
        position), as stored: a list of (buffer, where in it, header) per chunk read, fetched
        ahead in a background thread. For tools that copy a log's bytes (mirror); close() stops
        the read-ahead."""
        return self._chunks(start, end)

    def _chunks(
        self, position: int, end: int, *, first_chunk: int = FIRST_CHUNK, ahead: bool = True
    ) -> Generator[list[Frame], None, None]:
        """Every read starts here: the verified batches from the one holding `position` to
        `end`, a list per chunk. With `ahead`, fetched, framed and verified (the CRC releases the
        GIL) in a read-ahead thread while the caller decodes the chunk before."""
        chunks = self._frames(self._locate(position, end), end, first_chunk)
        return _in_background(chunks) if ahead else chunks

    def _decoded(
        self, position: int, chunks: Iterator[list[Frame]]
    ) -> Iterator[tuple[list[fmt.StoredMessage], fmt.BatchHeader]]:
        """The messages of each batch, those before `position` left out."""
        for buffer, at, header in chain.from_iterable(chunks):
            if header.position < position:
                batch = fmt.decode_records(self.stream, buffer, at, header, position)
                if not batch or batch[0].offset != position:
                    raise InvalidPosition(
                        f"position {position} is not a record boundary of stream {self.stream!r}: "
                        f"read from an offset or position the vault returned{BOUNDARY_HINT}"
                    )
            else:
                batch = fmt.decode_records(self.stream, buffer, at, header)
            yield batch, header

    def _locate(self, position: int, end: int) -> int:
        """The start of the batch holding `position`; InvalidPosition unless it is 0, the end, a
        batch start or a record offset (checked fully once the batch is decoded)."""
        if not 0 <= check_int("position", position) <= end:
            raise InvalidPosition(
                f"position {position} is outside stream {self.stream!r} (0 to {end}): read from an offset "
                "or position the vault returned"
            )
        if position in (0, end):
            return position
        not_a_boundary = InvalidPosition(
            f"position {position} is not a record boundary of stream {self.stream!r}: read from an offset "
            f"or position the vault returned{BOUNDARY_HINT}"
        )
        probe = self._source.read(fmt.data_at(position), fmt.BATCH_HEADER.size)
        if fmt.is_batch_start(probe):
            return position
        if len(probe) < min(len(fmt.BATCH_MAGIC), end - position):
            # Committed bytes are missing where the read starts, so its batch cannot be found.
            raise fmt.log_cut_short(self.stream, position)
        back = fmt.back_pointer(probe) if len(probe) >= 4 else 0
        start = position - back
        if back < fmt.BATCH_HEADER.size or start < 0:
            raise not_a_boundary
        head = self._source.read(fmt.data_at(start), fmt.BATCH_HEADER.size)
        try:
            batch = fmt.decode_batch_header(self.stream, head, 0, start)
        except CorruptDataError:
            raise not_a_boundary from None
        if not start + batch.records_at <= position < batch.end:
            raise not_a_boundary
        return start

    def _frames(self, start: int, end: int, first_chunk: int) -> Generator[list[Frame], None, None]:
        """The verified batches in [start, end), one list per chunk read. Chunks are read back to
        back, growing from `first_chunk`; only a batch that straddles two chunks is copied.

        A log that ends before `end` still yields every batch wholly in it; the error then names
        the first batch that is not, so it is the same whatever the chunk sizes."""
        chunk, fetched, position = first_chunk, start, start
        pending: bytes | memoryview = b""  # the beginning of a batch that straddles chunks
        while fetched < end:
            length = min(chunk, end - fetched)
            data = self._source.read(fmt.data_at(fetched), length)
            fetched += len(data)
            chunk = min(2 * chunk, REPLAY_CHUNK)
            frames: list[Frame] = []
            try:
                pending, position = self._frame_chunk(data, pending, position, end, frames)
            except CorruptDataError:
                if frames:  # what comes before the damage is still good
                    yield frames
                raise
            if frames:
                yield frames
            if len(data) < length:  # the log ends here: `position` starts the batch it cut short
                raise fmt.log_cut_short(self.stream, position)
        if position != end:  # fewer bytes than a batch header left below the committed position
            raise CorruptDataError(
                self.stream, position, f"batch header runs past the committed position {end}"
            )

    def _frame_chunk(
        self, data: bytes, pending: bytes | memoryview, position: int, end: int, frames: list[Frame]
    ) -> tuple[bytes | memoryview, int]:
        """Append the verified batches of one chunk (and the batch that `pending` began) to
        `frames`; return the bytes of a batch left incomplete and the next batch's position."""
        header_size = fmt.BATCH_HEADER.size
        length = len(data)
        index = 0
        if pending:
            head = bytes(pending[:header_size]) + data[: max(0, header_size - len(pending))]
            if len(head) < header_size:
                return b"".join((pending, data)), position
            needed = self._batch_header(head, 0, position, end).length - len(pending)
            if needed > length:
                return b"".join((pending, data)), position
            buffer = b"".join((pending, memoryview(data)[:needed]))
            frames.append(self._verified(buffer, 0, position, end))
            position += len(buffer)
            index, pending = needed, b""
        while index < length:
            if length - index < header_size:
                return memoryview(data)[index:], position
            header = self._batch_header(data, index, position, end)
            if index + header.length > length:
                return memoryview(data)[index:], position
            frames.append(self._verified(data, index, position, end, header))
            position = header.end
            index += header.length
        return b"", position

    def _verified(
        self, buffer: bytes, at: int, position: int, end: int, header: fmt.BatchHeader | None = None
    ) -> Frame:
        if header is None:
            header = self._batch_header(buffer, at, position, end)
        fmt.verify_batch(self.stream, buffer, at, header)
        return buffer, at, header

    def _batch_header(self, buffer: bytes, at: int, position: int, end: int) -> fmt.BatchHeader:
        """The header of the batch at `position` (buffer[at:]), which must end by `end`: checked
        as soon as the header is read, before waiting for bytes past the committed position."""
        header = fmt.decode_batch_header(self.stream, buffer, at, position)
        if header.end > end:
            raise CorruptDataError(self.stream, position, f"batch runs past the committed position {end}")
        return header

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


T = TypeVar("T")


def _in_background(groups: Generator[list[T], None, None]) -> Generator[list[T], None, None]:
    """Runs `groups` in a thread one group ahead of the caller; errors surface in the caller, and
    a caller that stops early stops the thread."""
    queue: Queue[tuple[list[T] | None, BaseException | None]] = Queue(maxsize=1)
    stop = threading.Event()

    def put(item: tuple[list[T] | None, BaseException | None]) -> None:
        while not stop.is_set():
            try:
                queue.put(item, timeout=0.1)
                return
            except Full:
                continue

    def run() -> None:
        try:
            for group in groups:
                put((group, None))
                if stop.is_set():
                    return
            put((None, None))
        except BaseException as error:  # handed to the caller, who raises it
            put((None, error))
        finally:
            groups.close()

    thread = threading.Thread(target=run, name="vault-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            group, error = queue.get()
            if group is None:
                if error is not None:
                    raise error
                return
            yield group
    finally:
        stop.set()
        with contextlib.suppress(Empty):
            queue.get_nowait()  # unblock a thread waiting to hand over one more group
        thread.join()


def _check_limit(name: str, value: int) -> None:
    if check_int(name, value) < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
