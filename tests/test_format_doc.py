"""docs/format.md is enough to read a stream: an independent decoder, written from that document
alone (no vault_core.format, no vault_core.reader), must read back exactly what the library wrote."""

from __future__ import annotations

import hashlib
import itertools
import struct
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
from crc32c import crc32c

import vault_core

# ---- the independent decoder: every constant and rule below comes from docs/format.md ----

SLOT_SIZE = 16896
DATA_START = 65536
PAGE = 512
COMMIT_MAGIC = b"MVC\xff"
BATCH_MAGIC = b"MVB\xff"
COMMIT_HEADER = struct.Struct("<4sIBBHIQQQ24x")  # 64 bytes
RING_ENTRY = struct.Struct("<QQ")
BATCH_HEADER = struct.Struct("<4sIBBBBIQQII")  # 40 bytes
RECORD_HEADER = struct.Struct("<IIB")  # back, value_length, key_length
MAX_BATCH_BYTES = 64 * 1024 * 1024
RING_CAPACITY = 1024


class Corrupt(Exception):
    """Corruption at `position`: the damaged batch's start, or 0 for the commit slots."""

    def __init__(self, position: int, detail: str) -> None:
        super().__init__(f"at {position}: {detail}")
        self.position = position


class BadPosition(Exception):
    pass


class Commit(NamedTuple):
    slot: int | None  # 0 = A, 1 = B, None for an empty stream
    counter: int
    position: int
    timestamp_ms: int
    ring: list[tuple[int, int]]  # (id_hash, batch_start), oldest first
    rolled: bool = False  # flags bit 0: the stream goes on in the next segment


class Batch(NamedTuple):
    position: int
    length: int
    timestamp_ms: int
    batch_id: bytes  # as stored: readers take any bytes
    messages: list[tuple[int, int, str, bytes]]  # (offset, timestamp_ms, key, value)


def id_hash(batch_id: str | bytes) -> int:
    stored = batch_id.encode("ascii") if isinstance(batch_id, str) else batch_id
    return int.from_bytes(hashlib.blake2b(stored, digest_size=8).digest(), "little")


def decode_slot(slot: int, data: bytes) -> Commit | None:
    if len(data) < COMMIT_HEADER.size or data[:4] != COMMIT_MAGIC:
        return None
    _magic, crc, version, flags, _reserved, ring_length, counter, position, timestamp = (
        COMMIT_HEADER.unpack_from(data)
    )
    ring_end = COMMIT_HEADER.size + RING_ENTRY.size * ring_length
    if ring_length > RING_CAPACITY or len(data) < ring_end or crc32c(data[8:ring_end]) != crc:
        return None
    if version != 1:
        raise Corrupt(0, f"commit slot of unknown version {version}")
    ring = list(RING_ENTRY.iter_unpack(data[COMMIT_HEADER.size : ring_end]))
    return Commit(slot, counter, position, timestamp, ring, bool(flags & 1))


def decode_commit(log: bytes) -> Commit:
    slots = [log[0:SLOT_SIZE], log[SLOT_SIZE : 2 * SLOT_SIZE]]
    valid = [c for c in (decode_slot(i, data) for i, data in enumerate(slots)) if c is not None]
    if valid:
        return max(valid, key=lambda c: c.counter)  # on equal counters the first, slot A
    if any(any(data) for data in slots):
        raise Corrupt(0, "both commit slots are damaged")
    return Commit(None, 0, 0, 0, [])


def decode_batch(log: bytes, start: int, end: int) -> Batch:
    head = log[DATA_START + start : DATA_START + start + BATCH_HEADER.size]
    if len(head) < BATCH_HEADER.size:
        raise Corrupt(start, f"batch header cut short at {start}")
    magic, crc, version, _flags, id_length, _r, length, position, timestamp, count, _r2 = BATCH_HEADER.unpack(
        head
    )
    if magic != BATCH_MAGIC or version != 1 or position != start:
        raise Corrupt(start, f"no version 1 batch at {start}")
    if not BATCH_HEADER.size + id_length <= length <= MAX_BATCH_BYTES or start + length > end:
        raise Corrupt(start, f"impossible batch length {length} at {start}")
    data = log[DATA_START + start : DATA_START + start + length]
    if len(data) != length:
        raise Corrupt(start, f"log ends inside the batch at {start}")
    if crc32c(data[8:]) != crc:
        raise Corrupt(start, f"checksum mismatch in the batch at {start}")
    messages = []
    at = BATCH_HEADER.size + id_length
    while at < length:
        if at + RECORD_HEADER.size > length:
            raise Corrupt(start, f"record header cut short in the batch at {start}")
        back, value_length, key_length = RECORD_HEADER.unpack_from(data, at)
        key_at = at + RECORD_HEADER.size
        value_at = key_at + key_length
        following = value_at + value_length
        if back != at or following > length:
            raise Corrupt(start, f"malformed record in the batch at {start}")
        try:  # strict, and a leading U+FEFF stays part of the key
            key = data[key_at:value_at].decode("utf-8")
        except UnicodeDecodeError:
            raise Corrupt(start, f"a key that is not UTF-8 in the batch at {start}") from None
        messages.append((start + at, timestamp, key, data[value_at:following]))
        at = following
    if len(messages) != count:
        raise Corrupt(start, f"batch at {start} has {len(messages)} records, its header says {count}")
    return Batch(start, length, timestamp, data[BATCH_HEADER.size : BATCH_HEADER.size + id_length], messages)


def decode_stream(log: bytes) -> tuple[Commit, list[Batch]]:
    commit = decode_commit(log)
    batches = []
    position = 0
    while position < commit.position:
        batch = decode_batch(log, position, commit.position)
        batches.append(batch)
        position += batch.length
    return commit, batches


def segment_bases(folder: Path) -> dict[int, Path]:
    """A stream's segments by base, from their names: `log` is 0, `log.<20 digits>` any other."""
    bases = {}
    for path in folder.iterdir():
        if path.name == "log":
            bases[0] = path
        elif path.name.startswith("log.") and len(path.name) == 24 and path.name[4:].isdigit():
            bases[int(path.name[4:])] = path
    return dict(sorted(bases.items()))


def assemble(folder: Path) -> tuple[bytes, int]:
    """A segmented stream as the one log it stands for, and its first position: the stream's
    commit slots (the newest segment's, or the rolled one's before it if the newest has no
    commit yet), then each position p from the segment holding it, at its byte 65536 + p - origin.
    Positions below the first are zeros here (a reader of the log must not need them)."""
    segments = [(base, path.read_bytes()) for base, path in segment_bases(folder).items()]
    newest = segments[-1][1][: 2 * SLOT_SIZE]
    if decode_commit(newest).slot is None and len(segments) > 1:
        before = segments[-2][1][: 2 * SLOT_SIZE]
        assert decode_commit(before).rolled, "a newest segment without a commit follows a rolled one"
        newest = before
    log = bytearray(newest.ljust(DATA_START, b"\0"))
    for index, (base, data) in enumerate(segments):
        end = segments[index + 1][0] if index + 1 < len(segments) else decode_commit(newest).position
        origin = base - base % PAGE
        log.extend(bytes(DATA_START + base - len(log)))  # zeros below the first position
        log[DATA_START + base : DATA_START + end] = data[
            DATA_START + base - origin : DATA_START + end - origin
        ]
    return bytes(log), segments[0][0]


def locate(log: bytes, position: int, end: int) -> int:
    """The start of the batch holding a valid read position (the end maps to itself)."""
    if not 0 <= position <= end:
        raise BadPosition(position)
    if position == end:
        return position
    head = log[DATA_START + position : DATA_START + position + 4]
    if head == BATCH_MAGIC:
        return position
    if len(head) < 4:  # the log is cut short where the read starts: its batch cannot be found
        raise Corrupt(position, f"the log ends at {position}, where a read starts")
    (back,) = struct.unpack("<I", head)
    start = position - back
    if back < BATCH_HEADER.size or start < 0:
        raise BadPosition(position)
    if position not in [offset for offset, *_ in decode_batch(log, start, end).messages]:
        raise BadPosition(position)
    return start


def read_from(log: bytes, position: int) -> list[tuple[int, int, str, bytes]]:
    """Every message from a valid read position on."""
    commit = decode_commit(log)
    start = locate(log, position, commit.position)
    messages = []
    while start < commit.position:
        batch = decode_batch(log, start, commit.position)
        messages += [message for message in batch.messages if message[0] >= position]
        start += batch.length
    return messages


# ---- an independent encoder, for streams the library's writer would not write ----


def encode_batch(
    position: int,
    timestamp_ms: int,
    records: list[tuple[bytes, bytes]],
    batch_id: bytes = b"",
    *,
    flags: int = 0,
    reserved: int = 0,
) -> bytes:
    body = bytearray()
    at = BATCH_HEADER.size + len(batch_id)
    for key, value in records:
        body += RECORD_HEADER.pack(at, len(value), len(key)) + key + value
        at += RECORD_HEADER.size + len(key) + len(value)
    header = BATCH_HEADER.pack(
        BATCH_MAGIC, 0, 1, flags, len(batch_id), reserved, at, position, timestamp_ms, len(records), reserved
    )
    batch = bytearray(header + batch_id + body)
    struct.pack_into("<I", batch, 4, crc32c(bytes(batch[8:])))
    return bytes(batch)


def encode_slot(
    counter: int, position: int, timestamp_ms: int, ring: list[tuple[int, int]], *, flags: int = 0
) -> bytes:
    entries = b"".join(RING_ENTRY.pack(*entry) for entry in ring)
    slot = bytearray(
        COMMIT_HEADER.pack(COMMIT_MAGIC, 0, 1, flags, 0xBEEF, len(ring), counter, position, timestamp_ms)
    )
    slot[40:64] = b"\x5a" * 24  # the reserved bytes, non-zero
    slot += entries
    struct.pack_into("<I", slot, 4, crc32c(bytes(slot[8:])))
    return bytes(slot)


# ---- the tests ----

STREAM = "orders"
BIG = bytes(range(256)) * 400  # 100 KiB
APPENDS: list[tuple[list[vault_core.Message], str | None]] = [
    ([vault_core.Message("order-created", b'{"id": 1}'), vault_core.Message("", b"")], None),
    ([vault_core.Message("注文-作成", b""), vault_core.Message("Bestellung-ändern", b"x")], "b-1"),
    ([vault_core.Message("blob-🙂", BIG), vault_core.Message("after-big", b"tail")], "order:42.retry_1"),
    ([vault_core.Message(f"event-{i}", str(i).encode() * i) for i in range(50)], None),
    ([vault_core.Message("k" * 255, b"\x00\xff" * 7)], "Z_9"),
    ([vault_core.Message("注文-作成", b""), vault_core.Message("Bestellung-ändern", b"x")], "b-1"),  # a retry
    ([vault_core.Message("é", b"")], "last"),
]


def write_stream(root: Path) -> tuple[vault_core.Store, list[vault_core.AppendResult]]:
    store = vault_core.open_store(root)
    with store.writer(STREAM) as writer:
        results = [writer.append(messages, batch_id=batch_id) for messages, batch_id in APPENDS]
    return store, results


def read_log(root: Path) -> bytes:
    return (root / STREAM / "log").read_bytes()


def test_documented_crc_variant_and_check_value():
    def crc32c_by_the_doc(data: bytes) -> int:
        crc = 0xFFFFFFFF
        for byte in data:
            crc ^= byte
            for _ in range(8):
                crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        return crc ^ 0xFFFFFFFF

    assert crc32c(b"123456789") == crc32c_by_the_doc(b"123456789") == 0xE3069283
    sample = bytes(range(256)) * 3
    assert crc32c(sample) == crc32c_by_the_doc(sample)


def test_documented_batch_id_hash():
    assert hashlib.blake2b(b"b-1", digest_size=8).hexdigest() == "2d47d6245e046c9b"
    assert id_hash("b-1") == 0x9B6C045E24D6472D


def test_independent_decoder_reads_what_the_library_wrote(tmp_path):
    store, results = write_stream(tmp_path)
    log = read_log(tmp_path)
    commit, batches = decode_stream(log)

    decoded = [message for batch in batches for message in batch.messages]
    with store.reader(STREAM) as reader:
        library = reader.commit_record()
        replayed = [tuple(message) for message in reader.replay()]
    assert decoded == replayed
    assert len(batches) == len(APPENDS) - 1  # the retry appended nothing
    assert (commit.counter, commit.position, commit.timestamp_ms) == (
        library.counter,
        library.position,
        library.timestamp_ms,
    )
    assert commit.position == results[-1].position == batches[-1].position + batches[-1].length
    assert commit.timestamp_ms == batches[-1].timestamp_ms
    assert results[5] == results[1]
    assert [r.offsets for r in results[:5] + results[6:]] == [
        [offset for offset, *_ in b.messages] for b in batches
    ]
    assert [[(key, value) for _o, _t, key, value in b.messages] for b in batches] == [
        [tuple(m) for m in messages] for messages, _ in APPENDS[:5] + APPENDS[6:]
    ]
    timestamps = [b.timestamp_ms for b in batches]
    assert timestamps == sorted(timestamps)


def test_ring_names_the_batch_starts_of_batch_ids(tmp_path):
    write_stream(tmp_path)
    commit, batches = decode_stream(read_log(tmp_path))
    with_ids = [b for b in batches if b.batch_id]
    assert [b.batch_id for b in with_ids] == [b"b-1", b"order:42.retry_1", b"Z_9", b"last"]
    assert commit.ring == [(id_hash(b.batch_id), b.position) for b in with_ids]  # oldest first
    starts = {b.position: b for b in batches}
    for hash_, start in commit.ring:
        assert id_hash(starts[start].batch_id) == hash_


def test_commit_slots_alternate_and_writes_are_whole_pages(tmp_path):
    write_stream(tmp_path)
    log = read_log(tmp_path)
    commit = decode_commit(log)
    assert commit.slot == commit.counter % 2
    other = 1 - commit.slot
    previous = decode_slot(other, log[other * SLOT_SIZE : (other + 1) * SLOT_SIZE])
    assert previous is not None and previous.counter == commit.counter - 1
    assert len(log) % PAGE == 0
    assert not any(log[2 * SLOT_SIZE : DATA_START])


def test_valid_read_positions(tmp_path):
    store, _results = write_stream(tmp_path)
    log = read_log(tmp_path)
    commit, batches = decode_stream(log)
    with store.reader(STREAM) as reader:
        for batch in batches:
            assert locate(log, batch.position, commit.position) == batch.position
            for offset, *rest in batch.messages:
                assert locate(log, offset, commit.position) == batch.position
                (first,) = reader.read(offset, max_messages=1).messages
                assert tuple(first) == (offset, *rest)
        assert locate(log, commit.position, commit.position) == commit.position
        for inside in (batches[0].messages[0][0] + 1, batches[2].messages[0][0] + 5000):
            with pytest.raises(BadPosition):
                locate(log, inside, commit.position)
            with pytest.raises(vault_core.InvalidPosition):
                reader.read(inside)


def test_empty_streams(tmp_path):
    assert decode_commit(b"") == Commit(None, 0, 0, 0, [])
    store = vault_core.open_store(tmp_path)
    with store.writer(STREAM):  # a new log, nothing appended yet: its initial, empty commit in slot A
        assert decode_commit(read_log(tmp_path)) == Commit(0, 0, 0, 0, [])
        with store.reader(STREAM) as reader:
            assert reader.position() == 0
    assert STREAM not in store.streams()  # closed with nothing appended, the new stream is gone


def test_a_damaged_newest_slot_falls_back_to_the_other(tmp_path):
    store, results = write_stream(tmp_path)
    path = tmp_path / STREAM / "log"
    log = bytearray(path.read_bytes())
    newest = decode_commit(bytes(log))
    log[newest.slot * SLOT_SIZE + 30] ^= 0x01  # as a torn commit write would
    path.write_bytes(log)
    commit, batches = decode_stream(bytes(log))
    assert commit.counter == newest.counter - 1
    with store.reader(STREAM) as reader:
        assert commit.position == results[4].position == reader.position()  # results[5] was a retry
        assert [m for b in batches for m in b.messages] == [tuple(m) for m in reader.replay()]


def test_a_damaged_batch_is_corruption(tmp_path):
    store, _results = write_stream(tmp_path)
    path = tmp_path / STREAM / "log"
    log = bytearray(path.read_bytes())
    _commit, batches = decode_stream(bytes(log))
    big_value_offset = batches[2].messages[0][0]
    log[DATA_START + big_value_offset + 1000] ^= 0x40
    path.write_bytes(log)
    with pytest.raises(Corrupt, match="checksum"):
        decode_stream(bytes(log))
    with store.reader(STREAM) as reader, pytest.raises(vault_core.CorruptDataError) as error:
        list(reader.replay())
    assert error.value.position == batches[2].position


def reseal(log: bytearray, start: int) -> None:
    """Make the CRC of the batch at position `start` match its bytes again, after changing them."""
    at = DATA_START + start
    (length,) = struct.unpack_from("<I", log, at + 12)
    struct.pack_into("<I", log, at + 4, crc32c(bytes(log[at + 8 : at + length])))


def rewrite_slot(
    log: bytearray, slot: int, *, version: int | None = None, counter: int | None = None
) -> None:
    """Change a commit slot's version or counter, and make its CRC valid again."""
    at = slot * SLOT_SIZE
    if version is not None:
        log[at + 8] = version
    if counter is not None:
        struct.pack_into("<Q", log, at + 16, counter)
    (ring_length,) = struct.unpack_from("<I", log, at + 12)
    ring_end = at + COMMIT_HEADER.size + RING_ENTRY.size * ring_length
    struct.pack_into("<I", log, at + 4, crc32c(bytes(log[at + 8 : ring_end])))


def test_a_newer_version_in_the_newest_slot_is_an_error_not_a_stale_read(tmp_path):
    store, _results = write_stream(tmp_path)
    log = bytearray(read_log(tmp_path))
    newest = decode_commit(bytes(log))
    rewrite_slot(log, newest.slot, version=2)
    (tmp_path / STREAM / "log").write_bytes(bytes(log))
    with pytest.raises(Corrupt, match="unknown version 2"):
        decode_commit(bytes(log))
    with pytest.raises(vault_core.UnknownFormatVersion, match="format version 2"):
        store.reader(STREAM).position()
    verify = subprocess.run(
        [sys.executable, "-m", "vault_core.cli", "verify", STREAM, "--store", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 1
    assert "format version 2 by a newer Message Vault: upgrade" in verify.stderr, verify.stderr
    assert "restore" not in verify.stderr


def test_a_newer_version_in_the_older_slot_is_an_error_too(tmp_path):
    """Its counter cannot be compared with the other slot's: the reader stops, at position 0."""
    store, _results = write_stream(tmp_path)
    log = bytearray(read_log(tmp_path))
    older = 1 - decode_commit(bytes(log)).slot
    rewrite_slot(log, older, version=7)
    (tmp_path / STREAM / "log").write_bytes(bytes(log))
    with pytest.raises(Corrupt, match="unknown version 7"):
        decode_commit(bytes(log))
    with pytest.raises(vault_core.CorruptDataError, match="format version 7") as error:
        store.reader(STREAM).position()
    assert error.value.position == 0
    assert f"slot {'AB'[older]}" in str(error.value)


def test_equal_counters_choose_slot_a(tmp_path):
    store, _results = write_stream(tmp_path)
    log = bytearray(read_log(tmp_path))
    newest = decode_commit(bytes(log))
    rewrite_slot(log, 1 - newest.slot, counter=newest.counter)
    (tmp_path / STREAM / "log").write_bytes(bytes(log))
    slot_a = decode_slot(0, bytes(log[:SLOT_SIZE]))
    slot_b = decode_slot(1, bytes(log[SLOT_SIZE : 2 * SLOT_SIZE]))
    assert slot_a and slot_b and slot_a.counter == slot_b.counter and slot_a.position != slot_b.position
    assert decode_commit(bytes(log)) == slot_a
    with store.reader(STREAM) as reader:
        assert reader.position() == slot_a.position
        assert reader.commit_record().ring == b"".join(RING_ENTRY.pack(*entry) for entry in slot_a.ring)


def test_a_leading_byte_order_mark_is_part_of_the_key(tmp_path):
    store = vault_core.open_store(tmp_path)
    with store.writer(STREAM) as writer:
        writer.append([vault_core.Message("\ufeffk", b"1"), vault_core.Message("k", b"2")])
    log = read_log(tmp_path)
    _commit, (batch,) = decode_stream(log)
    offset = batch.messages[0][0]
    assert log[DATA_START + offset + RECORD_HEADER.size :][:4] == b"\xef\xbb\xbfk"
    assert [(key, value) for _o, _t, key, value in batch.messages] == [("\ufeffk", b"1"), ("k", b"2")]
    with store.reader(STREAM) as reader:
        assert [tuple(m) for m in reader.replay()] == batch.messages


@pytest.mark.parametrize(
    "bad_key",
    [b"\xed\xa0\x80", b"\xc0\xaf\x41", b"ab\x80", b"a\xf4\x90\x80", b"\xe2\x82"],
    ids=["surrogate", "overlong", "stray continuation", "above U+10FFFF", "cut short"],
)
def test_a_key_that_is_not_strict_utf8_is_corruption(tmp_path, bad_key):
    store, _results = write_stream(tmp_path)
    path = tmp_path / STREAM / "log"
    log = bytearray(path.read_bytes())
    _commit, batches = decode_stream(bytes(log))
    damaged = batches[0]  # its first key is "order-created": 13 bytes to overwrite
    key_at = DATA_START + damaged.messages[0][0] + RECORD_HEADER.size
    log[key_at : key_at + len(bad_key)] = bad_key
    reseal(log, damaged.position)
    path.write_bytes(log)
    with pytest.raises(Corrupt, match="UTF-8") as error:
        decode_stream(bytes(log))
    assert error.value.position == damaged.position
    with store.reader(STREAM) as reader, pytest.raises(vault_core.CorruptDataError) as damage:
        list(reader.replay())
    assert damage.value.position == damaged.position


def test_a_record_count_that_differs_from_the_header_is_corruption(tmp_path):
    store, _results = write_stream(tmp_path)
    path = tmp_path / STREAM / "log"
    log = bytearray(path.read_bytes())
    _commit, batches = decode_stream(bytes(log))
    damaged = batches[1]  # two records
    for count in (1, 3, 0):
        struct.pack_into("<I", log, DATA_START + damaged.position + 32, count)
        reseal(log, damaged.position)
        path.write_bytes(log)
        with pytest.raises(Corrupt, match="records") as error:
            decode_stream(bytes(log))
        assert error.value.position == damaged.position
        with store.reader(STREAM) as reader:
            with pytest.raises(vault_core.CorruptDataError) as damage:
                list(reader.replay())
            assert damage.value.position == damaged.position
            with pytest.raises(vault_core.CorruptDataError) as damage:
                reader.read(damaged.messages[1][0])
            assert damage.value.position == damaged.position


def test_readers_accept_what_the_writer_limits_but_reading_does_not_need(tmp_path):
    """A stream the library's writer would not write: non-zero flags and reserved fields, a batch
    id of 200 non-ASCII bytes, a value over 1 MiB, a batch with no records and one with 10,001,
    timestamps above 2^53 that go back, a commit of even counter in slot B with a timestamp not
    the last batch's and a ring entry naming no batch id of the stream. The decoder and vault_core
    both read it; only verify(), an audit, objects."""
    data = bytearray()
    batches = [
        ([(b"first", b"v")], bytes(range(200, 256)) * 3 + bytes(32), 2**60),
        ([], b"", 2**53 + 1),  # no records, and earlier
        ([(b"big", b"\x07" * (1024 * 1024 + 1))], b"", 2**53 + 2),
        ([(b"", b"")] * 10_001, b"id", 2**53 + 3),
    ]
    for records, batch_id, timestamp_ms in batches:
        data += encode_batch(len(data), timestamp_ms, records, batch_id, flags=0x81, reserved=0xA5)
    end = len(data)
    log = bytearray(DATA_START + end + (-end % PAGE))
    log[SLOT_SIZE : 2 * SLOT_SIZE] = encode_slot(4, end, 1, [(12345, 0)], flags=0x42).ljust(SLOT_SIZE, b"\0")
    log[DATA_START : DATA_START + end] = data
    (tmp_path / STREAM).mkdir()
    (tmp_path / STREAM / "log").write_bytes(log)

    commit, decoded = decode_stream(bytes(log))
    assert (commit.slot, commit.counter, commit.position) == (1, 4, end)
    assert [len(b.messages) for b in decoded] == [1, 0, 1, 10_001]
    assert decoded[0].batch_id == batches[0][1]
    messages = [m for b in decoded for m in b.messages]
    store = vault_core.open_store(tmp_path)
    with store.reader(STREAM) as reader:
        assert reader.position() == end
        assert [tuple(m) for m in reader.replay()] == messages
        assert [tuple(m) for m in reader.read(decoded[2].messages[0][0]).messages][:2] == messages[1:3]
        with pytest.raises(vault_core.CorruptDataError):
            reader.verify()


def library_read(store: vault_core.Store, position: int) -> list[tuple[int, int, str, bytes]] | int:
    """The messages vault_core reads from `position` on, or the position of the damage it reports."""
    try:
        with store.reader(STREAM) as reader:
            return [tuple(m) for m in reader.read(position, max_messages=10_000, max_bytes=1 << 30).messages]
    except vault_core.CorruptDataError as damage:
        return damage.position


def decoder_read(log: bytes, position: int) -> list[tuple[int, int, str, bytes]] | int:
    try:
        return read_from(log, position)
    except Corrupt as damage:
        return damage.position


def test_a_log_cut_short_is_corruption_at_the_first_batch_not_wholly_in_it(tmp_path):
    """Cut anywhere, the log reads the same in the decoder and in vault_core, from every read
    position, and a whole replay, read and verify report the same position."""
    store, _results = write_stream(tmp_path)
    path = tmp_path / STREAM / "log"
    whole = path.read_bytes()
    commit, batches = decode_stream(whole)
    everything = [m for b in batches for m in b.messages]
    positions = [b.position for b in batches] + [m[0] for m in everything]
    cuts = {
        0,
        10,
        SLOT_SIZE + 100,
        2 * SLOT_SIZE,
        DATA_START - 1,
        DATA_START,
        DATA_START + commit.position - 1,
    }
    for b in batches:
        cuts |= {DATA_START + b.position + d for d in (0, 1, 39, 40, 41, b.length // 2, b.length - 1)}
    for cut in sorted(cuts):
        log = whole[:cut]
        path.write_bytes(log)
        try:
            decode_stream(log)
            damaged_at = None
        except Corrupt as damage:
            damaged_at = damage.position
        if cut >= 2 * SLOT_SIZE:  # the commit is whole: as the document says, the first batch cut short
            assert damaged_at == next(b.position for b in batches if DATA_START + b.position + b.length > cut)
        elif cut == 0:  # no log: an empty stream
            assert damaged_at is None and store.reader(STREAM).position() == 0
            continue
        else:  # commit slots cut: the other slot, or both damaged; no data left either way
            assert damaged_at == 0
        before = [m for m in everything if m[0] < damaged_at]
        with store.reader(STREAM) as reader:
            replayed = []
            with pytest.raises(vault_core.CorruptDataError) as damage:
                replayed.extend(tuple(m) for m in reader.replay())
            assert (replayed, damage.value.position) == (before, damaged_at), cut
            paged, position = [], 0
            with pytest.raises(vault_core.CorruptDataError) as damage:
                while True:
                    page = reader.read(position, max_messages=1)
                    paged += [tuple(m) for m in page.messages]
                    position = page.next_position
            assert (paged, damage.value.position) == (before, damaged_at), cut
            with pytest.raises(vault_core.CorruptDataError) as damage:
                reader.verify()
            assert damage.value.position == damaged_at, cut
        if cut >= 2 * SLOT_SIZE:
            for position in positions:
                assert library_read(store, position) == decoder_read(log, position), (cut, position)


def test_independent_decoder_reads_a_segmented_and_trimmed_stream(tmp_path):
    store = vault_core.open_store(tmp_path)
    with store.writer(STREAM, segment_bytes=4096) as writer:
        for index in range(120):
            writer.append(
                [vault_core.Message(f"k{index}", bytes([index]) * (50 + index * 3))], batch_id=f"b-{index}"
            )
        first = writer.trim(writer.position // 2)
    folder = tmp_path / STREAM
    bases = list(segment_bases(folder))
    assert len(bases) > 4 and bases[0] == first > 0
    # Each older segment's last commit is rolled, at the next one's base.
    for base, following in itertools.pairwise(bases):
        commit = decode_commit(
            (folder / ("log" if base == 0 else f"log.{base:020d}")).read_bytes()[: 2 * SLOT_SIZE]
        )
        assert commit.rolled and commit.position == following
    log, start = assemble(folder)
    commit = decode_commit(log)
    batches, position = [], start
    while position < commit.position:
        batches.append(decode_batch(log, position, commit.position))
        position += batches[-1].length
    with store.reader(STREAM) as reader:
        assert reader.first_position() == start
        assert [m for b in batches for m in b.messages] == [tuple(m) for m in reader.replay()]
        assert (commit.counter, commit.position) == (reader.commit_record().counter, reader.position())
    # The ring still names batches below the first position: readers ignore those.
    assert {s for _h, s in commit.ring if s >= start} <= {b.position for b in batches}
