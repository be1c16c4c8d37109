"""A stream's log read as what it holds: its commit record and its verified batches.

Every read of a log's structure goes through `LogFrames`: the reader's paged reads, replays and
follows, the time search, verification, mirror, and the writer when it opens a stream or looks a
batch id up. So a batch is framed and checked one way, and a log that ends short of its committed
position is reported one way (`cut_short`): at the first batch not wholly in it, whatever size of
reads found it out.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator

from . import format as fmt
from .errors import CorruptDataError, InvalidPosition, PositionTrimmed, check_int
from .readahead import read_ahead
from .stores.base import StreamLog

# A run's first request is small, so decoding starts early; each next one doubles up to the last.
FIRST_CHUNK = 256 * 1024
REPLAY_CHUNK = 16 * 1024 * 1024

Frame = tuple[bytes, int, fmt.BatchHeader]  # a verified batch: buffer, where in it, its header

# What an InvalidPosition for a position that is not a record boundary says to do.
BOUNDARY_HINT = (
    " (a message's offset, or where a read stopped), or find one by its time (seek_time, --from-time)"
)


def not_a_boundary(stream: str, position: int) -> InvalidPosition:
    return InvalidPosition(
        f"position {position} is not a record boundary of stream {stream!r}: read from an offset "
        f"or position the vault returned{BOUNDARY_HINT}"
    )


class LogFrames:
    """One stream's log, read as its commit record and its batches, each verified before use."""

    def __init__(self, stream: str, log: StreamLog) -> None:
        self.stream = stream
        self.log = log

    # --- the commit record ------------------------------------------------------------------

    def exists(self) -> bool:
        """The one answer to "does this stream exist?": its log is there, and not empty."""
        return self.log.size() > 0

    def first_position(self, *, fresh: bool = True) -> int:
        """Where the stream starts: its first segment's base (`StreamLog.first_position`)."""
        return self.log.first_position(fresh=fresh)

    def segment_bases(self) -> list[int]:
        """Where each of the stream's segments starts, oldest first ([0] for no stream yet)."""
        return self.log.segment_bases() or [0]

    def commit_slots(self) -> bytes:
        """Both commit slots as stored (empty if the log does not exist)."""
        return self.log.read(0, 2 * fmt.SLOT_SIZE)

    def commit_record(self) -> fmt.CommitRecord:
        """The current commit record: the newer valid slot (the empty record for a new log)."""
        return fmt.decode_commit_record(self.stream, self.commit_slots())

    # --- where a log ends -------------------------------------------------------------------

    def cut_short(self, position: int, previous: fmt.BatchHeader | None = None) -> CorruptDataError:
        """The error for a log that ends short of the committed position, found where the batch
        at `position` should be. It names the first batch not wholly in the log: this one, unless
        none of it is there and `previous` (the batch before, when the caller walked headers
        without reading bodies) already lacks its last byte."""
        at_end = fmt.data_at(position - 1)
        if previous is not None and position > previous.position and not self.log.read(at_end, 1):
            position = previous.position
        return fmt.log_cut_short(self.stream, position)

    # --- one batch --------------------------------------------------------------------------

    def header(self, buffer: bytes, at: int, position: int, end: int) -> fmt.BatchHeader:
        """The header of the batch at `position` (buffer[at:]), which must end by `end`: checked
        as soon as the header is read, before waiting for bytes past the committed position."""
        header = fmt.decode_batch_header(self.stream, buffer, at, position)
        if header.end > end:
            raise CorruptDataError(self.stream, position, f"batch runs past the committed position {end}")
        return header

    def read_header(self, position: int, end: int) -> fmt.BatchHeader:
        """The header of the batch at `position` read on its own (its batch id may be cut
        short, its body is not read)."""
        head = self.log.read(fmt.data_at(position), fmt.BATCH_HEADER.size + fmt.MAX_BATCH_ID_BYTES)
        if len(head) < min(fmt.BATCH_HEADER.size, end - position):
            raise self.cut_short(position)
        return self.header(head, 0, position, end)

    def whole_header(self, position: int, end: int) -> fmt.BatchHeader:
        """The header of the batch at `position`, which must be wholly in the log."""
        header = self.read_header(position, end)
        if not self.log.read(fmt.data_at(header.end - 1), 1):
            raise self.cut_short(position)
        return header

    def batch(self, position: int) -> tuple[bytes, fmt.BatchHeader]:
        """The verified batch that starts at `position`, alone in its buffer."""
        head = self.log.read(fmt.data_at(position), fmt.BATCH_HEADER.size)
        if len(head) < fmt.BATCH_HEADER.size:
            raise self.cut_short(position)
        header = fmt.decode_batch_header(self.stream, head, 0, position)
        buffer = self.log.read(fmt.data_at(position), header.length)
        if len(buffer) < header.length:
            raise self.cut_short(position)
        header = fmt.decode_batch_header(self.stream, buffer, 0, position)
        fmt.verify_batch(self.stream, buffer, 0, header)
        return buffer, header

    def batch_in(self, data: bytes, at: int, position: int, end: int) -> fmt.BatchHeader | None:
        """The batch whose magic bytes are at data[at:], if it is one: its header names its own
        position, it ends by `end`, and its checksum and records verify (the magic may also occur
        inside a value). None if not."""
        try:
            header = fmt.decode_batch_header(self.stream, data, at, position)
            if header.end > end:
                return None
            if at + header.length > len(data):
                data, at = self.log.read(fmt.data_at(position), header.length), 0
            fmt.verify_batch(self.stream, data, at, header)
            fmt.decode_checked(self.stream, data, at, header)
        except CorruptDataError:
            return None
        return header

    def locate(self, position: int, end: int) -> int:
        """The start of the batch holding `position`; InvalidPosition unless it is 0, the end, a
        batch start or a record offset (checked fully once the batch is decoded)."""
        if not 0 <= check_int("position", position) <= end:
            raise InvalidPosition(
                f"position {position} is outside stream {self.stream!r} (0 to {end}): read from an offset "
                "or position the vault returned"
            )
        if position == end:
            return position
        # As last listed, but for 0: a paged read costs no listing, and a read from 0 starts
        # where the stream starts now.
        first = self.first_position(fresh=position == 0)
        if position == 0 or position == first:  # 0 is where the stream starts, trimmed or not
            return first
        if position < first:
            raise PositionTrimmed(self.stream, position, first)
        probe = self.log.read(fmt.data_at(position), fmt.BATCH_HEADER.size)
        if fmt.is_batch_start(probe):
            return position
        if len(probe) < min(len(fmt.BATCH_MAGIC), end - position):
            # Committed bytes are missing where the read starts, so its batch cannot be found.
            raise self.cut_short(position)
        back = fmt.back_pointer(probe) if len(probe) >= 4 else 0
        start = position - back
        if back < fmt.BATCH_HEADER.size or start < 0:
            raise not_a_boundary(self.stream, position)
        head = self.log.read(fmt.data_at(start), fmt.BATCH_HEADER.size)
        try:
            batch = fmt.decode_batch_header(self.stream, head, 0, start)
        except CorruptDataError:
            raise not_a_boundary(self.stream, position) from None
        if not start + batch.records_at <= position < batch.end:
            raise not_a_boundary(self.stream, position)
        return start

    # --- runs of batches --------------------------------------------------------------------

    def chunks(
        self, position: int, end: int, *, first_chunk: int | None = None, ahead: bool = True
    ) -> Generator[list[Frame], None, None]:
        """The verified batches from the one holding `position` to `end`, a list per chunk read.
        With `ahead`, fetched, framed and verified (the CRC releases the GIL) in a read-ahead
        thread while the caller decodes the chunk before; close() stops it."""
        frames = self.frames(self.locate(position, end), end, first_chunk or FIRST_CHUNK)
        return read_ahead(frames) if ahead else frames

    def frames(self, start: int, end: int, first_chunk: int) -> Generator[list[Frame], None, None]:
        """The verified batches in [start, end), one list per chunk read. Chunks are read back to
        back, growing from `first_chunk` to REPLAY_CHUNK; only a batch that straddles two chunks
        is copied.

        A log that ends before `end` still yields every batch wholly in it; the error then names
        the first batch that is not."""
        chunk, fetched, position = first_chunk, start, start
        pending: bytes | memoryview = b""  # the beginning of a batch that straddles chunks
        while fetched < end:
            length = min(chunk, end - fetched)
            data = self.log.read(fmt.data_at(fetched), length)
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
                raise self.cut_short(position)
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
            needed = self.header(head, 0, position, end).length - len(pending)
            if needed > length:
                return b"".join((pending, data)), position
            buffer = b"".join((pending, memoryview(data)[:needed]))
            header = self.header(buffer, 0, position, end)
            fmt.verify_batch(self.stream, buffer, 0, header)
            frames.append((buffer, 0, header))
            position += len(buffer)
            index, pending = needed, b""
        while index < length:
            if length - index < header_size:
                return memoryview(data)[index:], position
            header = self.header(data, index, position, end)
            if index + header.length > length:
                return memoryview(data)[index:], position
            fmt.verify_batch(self.stream, data, index, header)
            frames.append((data, index, header))
            position = header.end
            index += header.length
        return b"", position

    def headers(self, position: int, stop: int, end: int, window: int) -> Iterator[fmt.BatchHeader]:
        """The headers of the batches from the batch start `position` to `stop`, read `window`
        bytes at a time: each batch's length leads to the next, so only the first must be known.
        (Only their fixed part: a batch id may be cut short.)"""
        buffer, base = b"", position
        previous: fmt.BatchHeader | None = None
        while position < stop:
            at = position - base
            if at + fmt.BATCH_HEADER.size > len(buffer):
                base, at = position, 0
                buffer = self.log.read(fmt.data_at(position), min(window, stop - position) + 64)
                if len(buffer) < min(fmt.BATCH_HEADER.size, end - position):
                    raise self.cut_short(position, previous if not buffer else None)
            header = self.header(buffer, at, position, end)
            yield header
            previous = header
            position = header.end
