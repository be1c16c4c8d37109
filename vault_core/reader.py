"""Reading a stream straight from storage: no server, no lease, never above the committed position."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

from . import format as fmt
from .errors import InvalidPosition
from .stores.base import LogSource

# Replay reads this much per request, one request ahead of decoding.
REPLAY_CHUNK = 16 * 1024 * 1024
# Slack beyond max_bytes that one read() fetches, so batch headers and keys fit in one request.
READ_SLACK = 64 * 1024


class ReadResult(NamedTuple):
    messages: list[fmt.StoredMessage]
    next_position: int  # where the next read continues


class StreamReader:
    """Reads one stream. Every byte returned has passed its batch checksum."""

    def __init__(self, stream: str, source: LogSource) -> None:
        self.stream = stream
        self._source = source

    def position(self) -> int:
        """The committed length of the stream now; 0 if it does not exist."""
        return self.commit().position

    def commit(self) -> fmt.Commit:
        """The stream's current commit record (position, last append time, ...)."""
        return fmt.decode_commit(self.stream, self._source.read(0, 2 * fmt.SLOT_SIZE))

    def read(
        self, position: int = 0, *, max_messages: int = 1000, max_bytes: int = 4 * 1024 * 1024
    ) -> ReadResult:
        """Messages from `position` (0, an offset or a position the vault returned): at most
        `max_messages`, and no more key and value bytes than `max_bytes` beyond the first message."""
        _check_limit("max_messages", max_messages)
        _check_limit("max_bytes", max_bytes)
        end = self.position()
        batch_start = self._locate(position, end)
        messages: list[fmt.StoredMessage] = []
        size = 0
        chunk = min(max_bytes + READ_SLACK, REPLAY_CHUNK)
        for batch, header in self._decoded(position, batch_start, end, chunk, read_ahead=False):
            for message in batch:
                size += len(message.key) + len(message.value)
                if messages and (len(messages) >= max_messages or size > max_bytes):
                    return ReadResult(messages, message.offset)
                messages.append(message)
            if len(messages) >= max_messages or size >= max_bytes:
                return ReadResult(messages, header.end)
        return ReadResult(messages, end)

    def replay(self, position: int = 0, *, end: int | None = None) -> Iterator[fmt.StoredMessage]:
        """Every message from `position` up to `end` (default: the position when called), reading
        large chunks one request ahead of decoding, in bounded memory."""
        committed = self.position()
        end = committed if end is None else end
        if isinstance(end, bool) or not isinstance(end, int) or not 0 <= end <= committed:
            raise InvalidPosition(f"end {end} is outside stream {self.stream!r} (0 to {committed})")
        return self._replay(position, end)

    def _replay(self, position: int, end: int) -> Iterator[fmt.StoredMessage]:
        batch_start = self._locate(position, end)
        for batch, _header in self._decoded(position, batch_start, end, REPLAY_CHUNK, read_ahead=True):
            yield from batch

    def follow(self, position: int = 0, *, poll_interval: float = 1.0) -> Iterator[fmt.StoredMessage]:
        """Every committed message from `position` on, in order, exactly once; then waits for new
        ones, polling every `poll_interval` seconds. Runs until the caller stops iterating."""
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval}")
        while True:
            end = self.position()
            if end != position:
                yield from self._replay(position, end)
                position = end
            else:
                time.sleep(poll_interval)

    def _decoded(
        self, position: int, batch_start: int, end: int, chunk: int, *, read_ahead: bool
    ) -> Iterator[tuple[list[fmt.StoredMessage], fmt.BatchHeader]]:
        """The messages of each batch from `batch_start`, those before `position` left out."""
        for buffer, at, header in self._batches(batch_start, end, chunk, read_ahead=read_ahead):
            if header.position < position:
                batch = fmt.decode_records(self.stream, buffer, at, header, position)
                if not batch or batch[0].offset != position:
                    raise InvalidPosition(
                        f"position {position} is not a record boundary of stream {self.stream!r}"
                    )
            else:
                batch = fmt.decode_records(self.stream, buffer, at, header)
            yield batch, header

    def _locate(self, position: int, end: int) -> int:
        """The start of the batch holding `position`; InvalidPosition unless it is 0, the end, a
        batch start or a record offset (checked fully once the batch is decoded)."""
        if isinstance(position, bool) or not isinstance(position, int):
            raise TypeError(f"position must be an int, got {type(position).__name__}")
        if not 0 <= position <= end:
            raise InvalidPosition(f"position {position} is outside stream {self.stream!r} (0 to {end})")
        if position == end:
            return position
        probe = self._source.read(fmt.data_at(position), fmt.BATCH_HEADER.size)
        if fmt.is_batch_start(probe):
            return position
        back = fmt.back_pointer(probe) if len(probe) >= 4 else 0
        start = position - back
        if back < fmt.BATCH_HEADER.size or start < 0:
            raise InvalidPosition(f"position {position} is not a record boundary of stream {self.stream!r}")
        header = self._source.read(fmt.data_at(start), fmt.BATCH_HEADER.size + fmt.MAX_BATCH_ID_BYTES)
        try:
            batch = fmt.decode_batch_header(self.stream, header, 0, start)
        except fmt.CorruptDataError:
            raise InvalidPosition(
                f"position {position} is not a record boundary of stream {self.stream!r}"
            ) from None
        if not start + batch.records_at <= position < batch.end:
            raise InvalidPosition(f"position {position} is not a record boundary of stream {self.stream!r}")
        return start

    def _batches(
        self, start: int, end: int, chunk: int, *, read_ahead: bool
    ) -> Iterator[tuple[bytes, int, fmt.BatchHeader]]:
        """Verified batches in [start, end) as (buffer, index in buffer, header). Chunks are read
        back to back; only a batch that straddles two chunks is copied into a buffer of its own."""
        position = start
        carry = bytearray()  # the beginning of a batch that straddles chunks
        for _chunk_start, data in self._chunks(start, end, chunk, read_ahead):
            index = 0
            if carry:
                needed = _bytes_needed(self.stream, carry, position)
                while needed and index < len(data):
                    taken = min(needed, len(data) - index)
                    carry += data[index : index + taken]
                    index += taken
                    needed = _bytes_needed(self.stream, carry, position)
                if needed:
                    continue
                buffer = bytes(carry)
                carry.clear()
                header = self._verified(buffer, 0, position, end)
                yield buffer, 0, header
                position = header.end
            while index < len(data):
                if _bytes_needed(self.stream, data, position, index):
                    carry += data[index:]
                    break
                header = self._verified(data, index, position, end)
                yield data, index, header
                position = header.end
                index += header.length
        if position != end:
            raise fmt.CorruptDataError(self.stream, position, "log ends before the committed position")

    def _verified(self, buffer: bytes, at: int, position: int, end: int) -> fmt.BatchHeader:
        header = fmt.decode_batch_header(self.stream, buffer, at, position)
        if header.end > end:
            raise fmt.CorruptDataError(self.stream, position, f"batch runs past the committed position {end}")
        fmt.verify_batch(self.stream, buffer, at, header)
        return header

    def _chunks(self, start: int, end: int, chunk: int, read_ahead: bool) -> Iterator[tuple[int, bytes]]:
        """The log's bytes for stream positions [start, end), in chunks, optionally fetching the
        next one while the caller decodes the current one."""

        def fetch(at: int) -> bytes:
            length = min(chunk, end - at)
            data = self._source.read(fmt.data_at(at), length)
            if len(data) != length:
                raise fmt.CorruptDataError(self.stream, at + len(data), "log is shorter than committed")
            return data

        if not read_ahead:
            for at in range(start, end, chunk):
                yield at, fetch(at)
            return
        with ThreadPoolExecutor(1, thread_name_prefix="vault-read-ahead") as pool:
            pending: Future[bytes] | None = pool.submit(fetch, start) if start < end else None
            at = start
            while pending is not None:
                data = pending.result()
                following = at + len(data)
                pending = pool.submit(fetch, following) if following < end else None
                yield at, data
                at = following

    def close(self) -> None:
        self._source.close()

    def __enter__(self) -> StreamReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _bytes_needed(stream: str, buffer: bytes | bytearray, position: int, at: int = 0) -> int:
    """How many more bytes buffer[at:] needs to hold the whole batch at `position`."""
    have = len(buffer) - at
    if have < fmt.BATCH_HEADER.size:
        return fmt.BATCH_HEADER.size - have
    header = fmt.decode_batch_header(stream, buffer, at, position)
    return max(0, header.length - have)


def _check_limit(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")


def read_batch(stream: str, source: LogSource, position: int) -> tuple[bytes, fmt.BatchHeader]:
    """The verified batch that starts at `position`, alone in its buffer."""
    head = source.read(fmt.data_at(position), fmt.BATCH_HEADER.size)
    header = fmt.decode_batch_header(stream, head, 0, position)
    buffer = source.read(fmt.data_at(position), header.length)
    header = fmt.decode_batch_header(stream, buffer, 0, position)
    fmt.verify_batch(stream, buffer, 0, header)
    return buffer, header
