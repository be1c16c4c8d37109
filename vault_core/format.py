"""The storage format of a stream, version 1: the one place it is defined.

docs/format.md describes the same bytes for readers in other languages. In short, a stream's log
is one byte sequence (a page blob, or a file with identical bytes):

    [0, 65536)          header: two commit slots, A at 0 and B at SLOT_SIZE
    [65536, ...)        data: batches back to back; logical position p is byte 65536 + p

A commit slot holds the committed position and the ring of recent batch ids. The writer alternates
slots, so a torn commit write can only damage the slot that was not yet acknowledged; readers take
the valid slot with the higher counter. A batch is a header, its batch id, then its records, all
covered by one CRC32C. Integers are little-endian.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import NamedTuple

from crc32c import crc32c

from .errors import CorruptDataError, InvalidStreamName, MessageTooLarge, UnknownFormatVersion

VERSION = 1
PAGE = 512
DATA_START = 64 * 1024

MAX_KEY_BYTES = 255
MAX_VALUE_BYTES = 1024 * 1024
MAX_BATCH_MESSAGES = 10_000
# Bounds the memory a writer or reader needs for one batch; a full batch of 1 MiB values is 64 of them.
MAX_BATCH_BYTES = 64 * 1024 * 1024
MAX_BATCH_ID_BYTES = 128

BATCH_MAGIC = b"MVB\xff"
# magic, crc, version, flags, id length, reserved, length, position, timestamp ms, count, reserved
BATCH_HEADER = struct.Struct("<4sIBBBBIQQII")
# Where in a batch header the fields are that are read or filled in alone (docs/format.md).
BATCH_CRC_AT = 4  # u32: CRC32C of the batch from BATCH_CHECKED_FROM to its end
BATCH_CHECKED_FROM = 8  # the checksum covers everything after itself
BATCH_ID_LENGTH_AT = 10  # u8: the batch id's length; the id follows the header
BATCH_PLACE_AT = 16  # u64 position, then u64 timestamp ms: filled in when the batch is placed
BATCH_CRC = struct.Struct("<I")
BATCH_PLACE = struct.Struct("<QQ")
# back-pointer to the batch start, value length, key length
RECORD_HEADER = struct.Struct("<IIB")
# The 4th byte of a record's back-pointer is below 0x80 (batches are far smaller than 2 GiB), so
# the batch magic, whose 4th byte is 0xff, never reads as the start of a record.

COMMIT_MAGIC = b"MVC\xff"
# magic, crc, version, flags, reserved, ring length, counter, position, timestamp ms
COMMIT_HEADER = struct.Struct("<4sIBBHIQQQ")
COMMIT_HEADER_SIZE = 64
COMMIT_ROLLED = 1  # flag: this segment is full; the stream continues in the segment at `position`
RING_ENTRY = struct.Struct("<QQ")  # batch id hash, batch start position
RING_CAPACITY = 1024
SLOT_SIZE = 33 * PAGE  # a 64-byte header and 1024 ring entries, rounded up to whole pages
COMMIT_SLOTS = (0, SLOT_SIZE)
assert COMMIT_HEADER_SIZE + RING_CAPACITY * RING_ENTRY.size <= SLOT_SIZE
assert 2 * SLOT_SIZE <= DATA_START
# The named offsets are those of BATCH_HEADER's fields.
assert (struct.calcsize("<4s"), struct.calcsize("<4sI")) == (BATCH_CRC_AT, BATCH_CHECKED_FROM)
assert (struct.calcsize("<4sIBB"), struct.calcsize("<4sIBBBBI")) == (BATCH_ID_LENGTH_AT, BATCH_PLACE_AT)


def _compiled() -> ModuleType | None:
    """The record format's hot loops in C (vault_core/_records.c), unless they were not built or
    VAULT_PURE_PYTHON is set. They mirror the Python code below and fall back to it for anything
    unusual, so results and errors are the same either way."""
    if os.environ.get("VAULT_PURE_PYTHON"):
        return None
    try:
        from . import _records  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _records


COMPILED = _compiled()

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_STREAM_NAME_CHARS = 50
# Both patterns are also what the HTTP contract (and its OpenAPI document) accepts: a stream name in
# a path, a batch id as the Idempotency-Key.
STREAM_NAME = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
BATCH_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


class Message(NamedTuple):
    """A message to append: a key (UTF-8, at most 255 bytes) and a value (at most 1 MiB)."""

    key: str
    value: bytes


class StoredMessage(NamedTuple):
    """A committed message as read back from a stream."""

    offset: int
    timestamp_ms: int
    key: str
    value: bytes

    @property
    def timestamp(self) -> datetime:
        """When the writer appended it: an aware UTC datetime, millisecond precision."""
        return from_ms(self.timestamp_ms)


class BatchHeader(NamedTuple):
    position: int  # where the batch starts in the stream
    length: int  # bytes, header included
    timestamp_ms: int
    message_count: int
    batch_id: bytes  # empty when the batch had none

    @property
    def end(self) -> int:
        return self.position + self.length

    @property
    def records_at(self) -> int:
        """Where the first record starts, relative to the batch start."""
        return BATCH_HEADER.size + len(self.batch_id)


class CommitRecord(NamedTuple):
    counter: int  # commits so far; slot = counter % 2
    position: int  # committed length of the stream
    timestamp_ms: int  # timestamp of the last batch
    ring: bytes  # RING_ENTRY records, oldest first
    flags: int = 0  # COMMIT_ROLLED: the stream goes on in a next segment (docs/format.md)

    @property
    def rolled(self) -> bool:
        return bool(self.flags & COMMIT_ROLLED)


EMPTY_COMMIT_RECORD = CommitRecord(0, 0, 0, b"")


def check_stream_name(name: object) -> str:
    if not isinstance(name, str):
        raise InvalidStreamName(f"stream name must be a string, got {type(name).__name__}")
    if not (1 <= len(name) <= MAX_STREAM_NAME_CHARS and STREAM_NAME.fullmatch(name)):
        raise InvalidStreamName(
            f"invalid stream name {name!r}: use 1-{MAX_STREAM_NAME_CHARS} lowercase letters, digits and "
            "single hyphens, starting and ending with a letter or digit"
        )
    return name


def check_batch_id(batch_id: object) -> bytes:
    """The batch id as stored, or b"" for none."""
    if batch_id is None:
        return b""
    if not isinstance(batch_id, str) or not BATCH_ID.fullmatch(batch_id):
        raise ValueError(f"invalid batch id {batch_id!r}: use 1-128 characters of letters, digits and ._:-")
    return batch_id.encode("ascii")


def batch_id_hash(batch_id: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(batch_id, digest_size=8).digest(), "little")


def to_ms(when: datetime) -> int:
    """Milliseconds since the epoch of a datetime (naive means UTC)."""
    if not isinstance(when, datetime):
        raise TypeError(f"expected a datetime, got {type(when).__name__}")
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - EPOCH) // timedelta(milliseconds=1)


def from_ms(timestamp_ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=timestamp_ms)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class PreparedBatch(NamedTuple):
    """A batch encoded but not yet placed: its header waits for a position and a timestamp."""

    buffer: bytearray
    message_count: int
    offsets: list[int]  # where each record starts, from the batch start


def _prepare_in_python(messages: object, batch_id: bytes = b"") -> PreparedBatch:
    """Validate and encode messages as one batch. Raises, before anything is stored, if any
    message is wrong. Needs no lock: the writer seals the batch when its turn comes."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError("messages must be a list of Message(key, value)")
    count = len(messages)
    if not 1 <= count <= MAX_BATCH_MESSAGES:
        raise ValueError(f"a batch holds 1 to {MAX_BATCH_MESSAGES} messages, got {count}")
    parts: list[bytes | bytearray] = [bytes(BATCH_HEADER.size), batch_id]
    offsets = []
    pack = RECORD_HEADER.pack
    at = BATCH_HEADER.size + len(batch_id)
    for index, message in enumerate(messages):
        try:
            key, value = message
            key_bytes = key.encode()
        except (TypeError, ValueError, AttributeError):
            raise TypeError(
                f"message {index}: expected Message(key: str, value: bytes), got {message!r:.80}"
            ) from None
        if type(value) is not bytes:
            if isinstance(value, memoryview):
                value = value.tobytes()
            elif not isinstance(value, bytearray):
                raise TypeError(f"message {index}: value must be bytes, got {type(value).__name__}")
        if len(key_bytes) > MAX_KEY_BYTES:
            raise MessageTooLarge(
                f"message {index}: key is {len(key_bytes)} bytes in UTF-8, "
                f"above the {MAX_KEY_BYTES}-byte limit"
            )
        if len(value) > MAX_VALUE_BYTES:
            raise MessageTooLarge(
                f"message {index}: value is {len(value)} bytes, above the {MAX_VALUE_BYTES}-byte limit"
            )
        parts.append(pack(at, len(value), len(key_bytes)))
        parts.append(key_bytes)
        parts.append(value)
        offsets.append(at)
        at += RECORD_HEADER.size + len(key_bytes) + len(value)
    if at > MAX_BATCH_BYTES:
        raise MessageTooLarge(
            f"the batch encodes to {at} bytes, above the {MAX_BATCH_BYTES}-byte limit; "
            "split it into smaller batches"
        )
    buffer = bytearray().join(parts)
    BATCH_HEADER.pack_into(buffer, 0, BATCH_MAGIC, 0, VERSION, 0, len(batch_id), 0, at, 0, 0, count, 0)
    return PreparedBatch(buffer, count, offsets)


def prepared_batch_id(batch: PreparedBatch) -> bytes:
    """The batch id a prepared batch was encoded with (b"" for none)."""
    return bytes(batch.buffer[BATCH_HEADER.size : BATCH_HEADER.size + batch.buffer[BATCH_ID_LENGTH_AT]])


def seal_batch(batch: PreparedBatch, *, position: int, timestamp_ms: int) -> list[int]:
    """Place a prepared batch at `position`: fill in its header and checksum. Returns the
    stream offsets of its messages."""
    BATCH_PLACE.pack_into(batch.buffer, BATCH_PLACE_AT, position, timestamp_ms)
    BATCH_CRC.pack_into(batch.buffer, BATCH_CRC_AT, crc32c(memoryview(batch.buffer)[BATCH_CHECKED_FROM:]))
    return list(map(position.__add__, batch.offsets))


def is_batch_start(buffer: bytes, at: int = 0) -> bool:
    return buffer[at : at + 4] == BATCH_MAGIC


def decode_batch_header(stream: str, buffer: bytes, at: int, position: int) -> BatchHeader:
    """Read and sanity-check the header of the batch expected at `position` (buffer[at:]).
    The checksum is checked by `verify_batch`, once the whole batch is at hand."""
    if len(buffer) - at < BATCH_HEADER.size:
        raise CorruptDataError(stream, position, "batch header cut short")
    magic, _crc, version, _flags, id_len, _r, length, stored_position, timestamp, count, _r2 = (
        BATCH_HEADER.unpack_from(buffer, at)
    )
    if magic != BATCH_MAGIC:
        raise CorruptDataError(stream, position, "no batch header where one should start")
    if version != VERSION:
        raise CorruptDataError(stream, position, f"unknown batch format version {version}")
    if stored_position != position:
        raise CorruptDataError(stream, position, f"batch header says it starts at {stored_position}")
    if not BATCH_HEADER.size + id_len <= length <= MAX_BATCH_BYTES:
        raise CorruptDataError(stream, position, f"impossible batch length {length}")
    id_at = at + BATCH_HEADER.size
    batch_id = bytes(buffer[id_at : id_at + id_len])
    return BatchHeader(position, length, timestamp, count, batch_id)


def log_cut_short(stream: str, position: int) -> CorruptDataError:
    """The error for a committed batch that is not wholly in the log (the log ends inside it or
    before it): raised at that batch's start, whatever size of reads found it out."""
    return CorruptDataError(
        stream, position, "the log ends before this batch does, short of the committed position"
    )


def verify_batch(stream: str, buffer: bytes, at: int, header: BatchHeader) -> None:
    (stored,) = BATCH_CRC.unpack_from(buffer, at + BATCH_CRC_AT)
    if crc32c(memoryview(buffer)[at + BATCH_CHECKED_FROM : at + header.length]) != stored:
        raise CorruptDataError(
            stream,
            header.position,
            f"checksum mismatch in the batch of {header.length} bytes at {header.position}",
        )


def _decode_in_python(
    stream: str, buffer: bytes, at: int, header: BatchHeader, start: int | None = None
) -> list[StoredMessage]:
    """The messages of a verified batch at buffer[at:], from offset `start` (default: all).
    Raises CorruptDataError if the records do not fill the batch exactly."""
    if start is not None:
        return [m for m in decode_checked(stream, buffer, at, header) if m.offset >= start]
    # The hot loop of every read: per record one unpack, two slices and one tuple, nothing more.
    # (The checksum already vouches for the bytes; decode_checked also checks back-pointers.)
    unpack = RECORD_HEADER.unpack_from
    make = tuple.__new__
    message = StoredMessage
    timestamp = header.timestamp_ms
    base = header.position - at  # stream offset of buffer[0]
    end = at + header.length
    index = at + header.records_at
    out: list[StoredMessage] = []
    append = out.append
    keys: dict[bytes, str] = {}
    key_of = keys.get
    try:
        while index < end:
            _back, value_len, key_len = unpack(buffer, index)
            value_at = index + 9 + key_len
            next_index = value_at + value_len
            raw_key = buffer[index + 9 : value_at]
            key = key_of(raw_key)
            if key is None:
                key = keys[raw_key] = raw_key.decode()
            append(make(message, (base + index, timestamp, key, buffer[value_at:next_index])))
            index = next_index
    except (struct.error, UnicodeDecodeError) as error:
        raise CorruptDataError(stream, header.position, f"malformed record: {error}") from None
    if index != end or len(out) != header.message_count:
        raise CorruptDataError(stream, header.position, "records do not match the batch header")
    return out


# The record path, chosen here once: the compiled twins where they were built. They hand anything
# unusual (a bytearray, a value the C code does not take) to the Python code, so results and errors
# are the same either way (tests/test_records.py swaps in PYTHON_TWINS to compare).
PYTHON_TWINS = {"prepare_batch": _prepare_in_python, "decode_records": _decode_in_python}
if COMPILED is None:
    prepare_batch = _prepare_in_python
    decode_records = _decode_in_python
else:
    _built = COMPILED

    def prepare_batch(messages: object, batch_id: bytes = b"") -> PreparedBatch:
        """Validate and encode messages as one batch. Raises, before anything is stored, if any
        message is wrong. Needs no lock: the writer seals the batch when its turn comes."""
        fast = _built.prepare(messages, batch_id) if type(batch_id) is bytes else None
        return _prepare_in_python(messages, batch_id) if fast is None else PreparedBatch(*fast)

    def decode_records(
        stream: str, buffer: bytes, at: int, header: BatchHeader, start: int | None = None
    ) -> list[StoredMessage]:
        """The messages of a verified batch at buffer[at:], from offset `start` (default: all).
        Raises CorruptDataError if the records do not fill the batch exactly."""
        if start is None and type(buffer) is bytes:
            fast: list[StoredMessage] | None = _built.decode(
                buffer,
                at + header.records_at,
                at + header.length,
                header.position - at,
                header.timestamp_ms,
                header.message_count,
                StoredMessage,
            )
            if fast is not None:
                return fast
        return _decode_in_python(stream, buffer, at, header, start)


def decode_checked(stream: str, buffer: bytes, at: int, header: BatchHeader) -> list[StoredMessage]:
    """decode_records, also checking every record's back-pointer."""
    messages = decode_records(stream, buffer, at, header)
    unpack = _BACK_POINTER.unpack_from
    start = header.position
    for message in messages:
        back = message.offset - start  # where the record is in its batch, which it must point back by
        if unpack(buffer, at + back)[0] != back:
            raise CorruptDataError(stream, header.position, f"record at {message.offset} points elsewhere")
    return messages


_BACK_POINTER = struct.Struct("<I")


def back_pointer(buffer: bytes) -> int:
    """For the first bytes of a record: the distance back to its batch start."""
    return _BACK_POINTER.unpack_from(buffer)[0]


def encode_commit_record(commit: CommitRecord) -> bytes:
    """A commit slot's bytes, padded to whole pages."""
    ring_len = len(commit.ring) // RING_ENTRY.size
    header = bytearray(COMMIT_HEADER_SIZE)
    COMMIT_HEADER.pack_into(
        header,
        0,
        COMMIT_MAGIC,
        0,
        VERSION,
        commit.flags,
        0,
        ring_len,
        commit.counter,
        commit.position,
        commit.timestamp_ms,
    )
    body = bytes(header) + commit.ring
    crc = crc32c(body[8:])
    record = body[:4] + struct.pack("<I", crc) + body[8:]
    return record + bytes(-len(record) % PAGE)


def _decode_slot(stream: str, slot: str, buffer: bytes) -> CommitRecord | None:
    """The commit in one slot (`slot` is "A" or "B"), or None if the slot is empty (never
    written) or damaged. An intact slot of another version is an error, whatever the other slot
    holds: its counter cannot be compared, and the other slot may hold an older commit."""
    if len(buffer) < COMMIT_HEADER_SIZE or buffer[:4] != COMMIT_MAGIC:
        return None
    _magic, crc, version, flags, _r, ring_len, counter, position, timestamp = COMMIT_HEADER.unpack_from(
        buffer
    )
    ring_end = COMMIT_HEADER_SIZE + ring_len * RING_ENTRY.size
    if ring_len > RING_CAPACITY or len(buffer) < ring_end or crc32c(buffer[8:ring_end]) != crc:
        return None
    if version != VERSION:  # intact but newer: falling back to the other slot would read stale data
        raise UnknownFormatVersion(
            stream,
            0,
            f"commit slot {slot} is in format version {version}, and this reader knows only version "
            f"{VERSION}: read the stream with a vault_core that knows version {version}",
            version,
        )
    return CommitRecord(counter, position, timestamp, bytes(buffer[COMMIT_HEADER_SIZE:ring_end]), flags)


def decode_commit_record(stream: str, header: bytes) -> CommitRecord:
    """The newest valid commit in a log's header bytes (both slots). A log that was never
    committed (short or zero bytes) is empty; both slots written and damaged is corruption."""
    slots = [header[at : at + SLOT_SIZE] for at in COMMIT_SLOTS]
    commits = [_decode_slot(stream, name, slot) for name, slot in zip("AB", slots, strict=True)]
    valid = [c for c in commits if c is not None]
    if valid:
        # On equal counters (no vault writer leaves them) slot A wins: max() keeps the first.
        return max(valid, key=lambda c: c.counter)
    if any(slot.strip(b"\0") for slot in slots):
        raise CorruptDataError(stream, 0, "both commit slots are damaged")
    return EMPTY_COMMIT_RECORD


def ring_entries(ring: bytes) -> list[tuple[int, int]]:
    return list(RING_ENTRY.iter_unpack(ring))


def ring_add(ring: bytes, id_hash: int, position: int) -> bytes:
    """The ring with one more batch id, the oldest dropped past RING_CAPACITY entries."""
    ring = ring + RING_ENTRY.pack(id_hash, position)
    return ring[-RING_CAPACITY * RING_ENTRY.size :]


def data_at(position: int) -> int:
    """The byte of the log where logical stream position `position` is stored."""
    return DATA_START + position
