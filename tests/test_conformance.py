"""The behaviour every store backend must have. Each test runs against the local store, Azurite and
the in-memory store."""

from __future__ import annotations

import itertools
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vault_core
from tests.support.streams import contents
from vault_core import Message

MiB = 1024 * 1024


@pytest.fixture(params=["local", "azurite", "memory"])
def store(request) -> vault_core.Store:
    """Each store backend in turn (the suite's `store`, with the in-memory one too)."""
    return request.getfixturevalue(f"{request.param}_store")


def batch(n: int, tag: str = "m", size: int = 10) -> list[Message]:
    return [Message(f"{tag}-{i}", f"{tag}:{i}:".encode() + bytes(size)) for i in range(n)]


def test_round_trip(store):
    batches = [batch(1, "a"), batch(5, "b", 100), batch(200, "c", 3)]
    with store.writer("orders") as writer:
        results = [writer.append(b) for b in batches]
        assert writer.position == results[-1].position
    messages = list(store.reader("orders").replay())
    assert [(m.key, m.value) for m in messages] == [(k, v) for b in batches for k, v in b]
    assert [m.offset for m in messages] == [o for r in results for o in r.offsets]
    assert store.reader("orders").position() == results[-1].position
    offsets = [m.offset for m in messages]
    assert offsets == sorted(set(offsets))  # unique, strictly increasing
    stamps = [m.timestamp for m in messages]
    assert stamps == sorted(stamps)
    assert all(s.tzinfo is UTC and s.microsecond % 1000 == 0 for s in stamps)
    assert abs(datetime.now(UTC) - stamps[-1]) < timedelta(minutes=1)


def test_batch_shares_one_timestamp_and_contiguous_offsets(store):
    with store.writer("s") as writer:
        result = writer.append(batch(10))
    messages = list(store.reader("s").replay())
    assert len({m.timestamp_ms for m in messages}) == 1
    sizes = [9 + len(m.key.encode()) + len(m.value) for m in messages]
    assert [b - a for a, b in zip(result.offsets, result.offsets[1:], strict=False)] == sizes[:-1]
    assert result.position == result.offsets[-1] + sizes[-1]


def test_read_from_every_offset_and_position(store):
    with store.writer("s") as writer:
        results = [writer.append(batch(n, f"b{n}")) for n in (3, 1, 4, 1, 5)]
    everything = list(store.reader("s").replay())
    reader = store.reader("s")
    for index, message in enumerate(everything):
        got = reader.read(message.offset, max_messages=10_000).messages
        assert got == everything[index:]
    for result in results:
        got = reader.read(result.position).messages
        assert got == [m for m in everything if m.offset >= result.position]
        assert list(reader.replay(result.position)) == got
    assert list(reader.replay(everything[7].offset)) == everything[7:]


def test_read_pages_through_with_limits(store):
    with store.writer("s") as writer:
        for n in range(1, 8):
            writer.append(batch(n, f"b{n}", size=1000))
    everything = list(store.reader("s").replay())
    reader = store.reader("s")
    for max_messages, max_bytes in [(1, 4 * MiB), (3, 4 * MiB), (1000, 2500), (1000, 1)]:
        seen, position = [], 0
        while True:
            result = reader.read(position, max_messages=max_messages, max_bytes=max_bytes)
            if not result.messages:
                assert result.next_position == position == reader.position()
                break
            assert len(result.messages) <= max_messages
            if len(result.messages) > 1:
                assert sum(len(m.key) + len(m.value) for m in result.messages) <= max_bytes
            seen += result.messages
            position = result.next_position
        assert seen == everything


def test_batches_above_4_mib_and_1_mib_values(store):
    big = [Message(f"big-{i}", bytes([i]) * MiB) for i in range(6)]  # ~6 MiB: several page writes
    with store.writer("s") as writer:
        first = writer.append(big)
        second = writer.append([Message("after", b"x")])
    messages = list(store.reader("s").replay())
    assert [(m.key, m.value) for m in messages] == [*big, ("after", b"x")]
    assert messages[-1].offset == second.offsets[0] > first.position - 1
    assert store.reader("s").read(first.offsets[3], max_messages=1).messages[0].value == bytes([3]) * MiB


def test_many_streams(store):
    names = [f"stream-{i}" for i in range(12)]
    for i, name in enumerate(names):
        with store.writer(name) as writer:
            writer.append(batch(i + 1, name))
    assert store.streams() == sorted(names)
    for i, name in enumerate(names):
        assert contents(store, name) == batch(i + 1, name)


def test_missing_stream_reads_empty(store):
    reader = store.reader("nothing-here")
    assert reader.position() == 0
    assert reader.read(0).messages == []
    assert list(reader.replay()) == []
    assert store.streams() == []


def test_writer_reopens_and_continues(store):
    with store.writer("s") as writer:
        first = writer.append(batch(3, "a"))
    with store.writer("s") as writer:
        assert writer.position == first.position
        writer.append(batch(2, "b"))
    assert contents(store, "s") == batch(3, "a") + batch(2, "b")


@pytest.mark.parametrize(
    "name",
    ["", "Orders", "orders_1", "-orders", "orders-", "or--ders", "a" * 51, "ørders", "a b", "a/b", None, 7],
)
def test_bad_stream_names_are_refused(store, name):
    with pytest.raises((vault_core.InvalidStreamName, TypeError)) as error:
        store.writer(name)
    assert isinstance(error.value, ValueError | TypeError)
    with pytest.raises((vault_core.InvalidStreamName, TypeError)):
        store.reader(name)
    assert store.streams() == []


def test_good_stream_names(store):
    for name in ["a", "0", "a" * 50, "order-events-2", "9-lives"]:
        with store.writer(name) as writer:
            writer.append(batch(1))
    assert len(store.streams()) == 5


@pytest.mark.parametrize(
    ("messages", "error", "says"),
    [
        ([], ValueError, "1 to 10000"),
        (batch(10_001), ValueError, "1 to 10000"),
        ([Message("k" * 256, b"")], vault_core.MessageTooLarge, "key is 256 bytes"),
        ([Message("é" * 128, b"")], vault_core.MessageTooLarge, "key is 256 bytes"),
        ([Message("k", bytes(MiB + 1))], vault_core.MessageTooLarge, "1048576-byte limit"),
        ([Message("k", bytes(MiB))] * 65, vault_core.MessageTooLarge, "split it"),
        ([Message("k", "text")], TypeError, "value must be bytes"),
        ([Message(b"k", b"v")], TypeError, "expected Message"),
        ([("k", b"v", 3)], TypeError, "expected Message"),
        ([None], TypeError, "expected Message"),
        ("kv", TypeError, "list of Message"),
        ([Message("ok", b"v"), Message("k", bytes(MiB + 1))], vault_core.MessageTooLarge, "message 1"),
    ],
)
def test_bad_input_changes_nothing(store, messages, error, says):
    with store.writer("s") as writer:
        before = writer.append(batch(2))
        with pytest.raises(error, match=says):
            writer.append(messages)
        assert writer.position == before.position
        after = writer.append(batch(1, "z"))  # the writer is still usable
    assert contents(store, "s") == batch(2) + batch(1, "z")
    assert after.offsets[0] >= before.position


@pytest.mark.parametrize("batch_id", ["", "a" * 129, "has space", "ünï", 5])
def test_bad_batch_ids_are_refused(store, batch_id):
    with store.writer("s") as writer, pytest.raises(ValueError, match="batch id"):
        writer.append(batch(1), batch_id=batch_id)
    assert store.reader("s").position() == 0


def test_lease_seconds_are_checked(store):
    for bad in (14, 61):
        with pytest.raises(ValueError, match="15 to 60"):
            store.writer("s", lease_seconds=bad)


def test_invalid_positions(store):
    with store.writer("s") as writer:
        result = writer.append([Message("key", b"value-bytes"), Message("k2", b"v2")])
    reader = store.reader("s")
    for position in [-1, result.position + 1, 10**12]:
        with pytest.raises(vault_core.InvalidPosition, match="outside"):
            reader.read(position)
    for position in [1, result.offsets[0] - 1, result.offsets[0] + 1, result.offsets[1] + 3]:
        with pytest.raises(vault_core.InvalidPosition, match="not a record boundary"):
            reader.read(position)
        with pytest.raises(vault_core.InvalidPosition):
            list(reader.replay(position))
    with pytest.raises(TypeError):
        reader.read("0")
    with pytest.raises(ValueError):
        reader.read(0, max_messages=0)
    assert reader.read(result.position).messages == []


def test_batch_id_makes_append_exactly_once(store):
    with store.writer("s") as writer:
        first = writer.append(batch(3, "a"), batch_id="order-1")
        writer.append(batch(1, "b"))
        assert writer.append(batch(3, "a"), batch_id="order-1") == first
        with pytest.raises(vault_core.BatchIdConflict, match="order-1"):
            writer.append(batch(3, "other"), batch_id="order-1")
    with store.writer("s") as writer:  # a new writer remembers
        assert writer.append(batch(3, "a"), batch_id="order-1") == first
        position = writer.position
    assert store.reader("s").position() == position
    assert contents(store, "s") == batch(3, "a") + batch(1, "b")


def test_batch_id_window_covers_the_last_1024_batches(store):
    with store.writer("s") as writer:
        results = [writer.append([Message("k", b"%d" % i)], batch_id=f"id-{i}") for i in range(1030)]
        position = writer.position
    with store.writer("s") as writer:
        for i in (6, 500, 1029):
            assert writer.append([Message("k", b"%d" % i)], batch_id=f"id-{i}") == results[i]
        assert writer.position == position
        # Past the window an id is forgotten: the same id appends again.
        assert writer.append([Message("k", b"0")], batch_id="id-0").position > position


def test_closed_writer_refuses(store):
    writer = store.writer("s")
    writer.close()
    with pytest.raises(vault_core.VaultError, match="closed"):
        writer.append(batch(1))
    with store.writer("s") as again:  # closing released ownership
        again.append(batch(1))


def test_follow_chases_the_tail(store):
    with store.writer("s") as writer:
        writer.append(batch(2, "early"))
    expected = batch(2, "early") + [m for i in range(5) for m in batch(3, f"late{i}")]
    received: list[tuple[str, bytes]] = []

    def produce() -> None:
        with store.writer("s") as w:
            for i in range(5):
                time.sleep(0.05)
                w.append(batch(3, f"late{i}"))

    producer = threading.Thread(target=produce)
    producer.start()
    deadline = time.monotonic() + 30
    for message in store.reader("s").follow(poll_interval=0.02):
        received.append((message.key, message.value))
        if len(received) == len(expected) or time.monotonic() > deadline:
            break
    producer.join()
    assert received == expected


def test_follow_from_an_offset_then_sees_new_batches(store):
    with store.writer("s") as writer:
        result = writer.append(batch(4))
        follower = store.reader("s").follow(result.offsets[2], poll_interval=0.01)
        assert [next(follower).key, next(follower).key] == ["m-2", "m-3"]
        writer.append(batch(1, "new"))
        assert next(follower).key == "new-0"


def test_read_url_reads_the_stream(store):
    with store.writer("s") as writer:
        writer.append(batch(5))
    reader = vault_core.open_reader(store.read_url("s"))
    assert [(m.key, m.value) for m in reader.replay()] == batch(5)
    assert reader.position() == store.reader("s").position()


_property_streams = itertools.count()
keys = st.text(max_size=40).filter(lambda k: len(k.encode()) <= 255)
messages_strategy = st.lists(st.builds(Message, keys, st.binary(max_size=3000)), min_size=1, max_size=30)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(messages_strategy, min_size=1, max_size=6), data=st.data())
def test_property_round_trip(store, batches, data):
    stream = f"p-{next(_property_streams)}"  # examples share the store
    with store.writer(stream) as writer:
        results = [writer.append(b) for b in batches]
    messages = list(store.reader(stream).replay())
    assert [(m.key, m.value) for m in messages] == [tuple(m) for b in batches for m in b]
    assert [m.offset for m in messages] == [o for r in results for o in r.offsets]
    some = data.draw(st.sampled_from(messages))
    assert store.reader(stream).read(some.offset, max_messages=1).messages == [some]


@pytest.mark.parametrize(("first", "largest"), [(7, 64), (100, 1000), (4096, 4096)])
def test_replay_across_any_chunk_boundary(store, monkeypatch, first, largest):
    """Batches that straddle chunks, headers cut in two, batches bigger than a chunk."""
    monkeypatch.setattr(vault_core.framing, "FIRST_CHUNK", first)
    monkeypatch.setattr(vault_core.framing, "REPLAY_CHUNK", largest)
    sizes = [1, 40, 3, 700, 2, 5000, 1, 13]
    with store.writer("s") as writer:
        for n, size in enumerate(sizes):
            writer.append(batch(1 + n % 3, f"b{n}", size))
    expected = [m for n, size in enumerate(sizes) for m in batch(1 + n % 3, f"b{n}", size)]
    reader = store.reader("s")
    assert [(m.key, m.value) for m in reader.replay()] == expected
    offsets = [m.offset for m in reader.replay()]
    assert [(m.key, m.value) for m in reader.replay(offsets[5])] == expected[5:]
    assert [m.offset for m in reader.read(0, max_messages=100, max_bytes=50).messages] == offsets[:1]


def test_a_replay_abandoned_early_stops_its_reader_thread(store):
    with store.writer("s") as writer:
        for n in range(50):
            writer.append(batch(100, f"b{n}", 500))
    before = threading.active_count()
    replay = store.reader("s").replay()
    assert next(replay).key == "b0-0"
    replay.close()
    assert threading.active_count() == before


def test_concurrent_appends_commit_together_each_batch_whole_and_once(store):
    """Eight threads append at once, some retrying ids, some sending bad batches: every accepted
    batch is in the stream exactly once, whole, at the offsets its append returned."""
    results: dict[str, vault_core.AppendResult] = {}
    refused: list[str] = []

    def produce(thread: int) -> None:
        for n in range(15):
            name = f"t{thread}-{n}"
            messages = batch(1 + (thread + n) % 7, name, size=(thread * 31 + n) % 200)
            if n % 5 == 4:  # a bad batch among good ones
                try:
                    writer.append([*messages, Message("k", bytes(vault_core.format.MAX_VALUE_BYTES + 1))])
                except vault_core.MessageTooLarge:
                    refused.append(name)
                continue
            result = writer.append(messages, batch_id=name)
            assert writer.append(messages, batch_id=name) == result  # a retry changes nothing
            results[name] = result

    with store.writer("s") as writer:
        threads = [threading.Thread(target=produce, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        position = writer.position
    assert len(refused) == 8 * 3 and len(results) == 8 * 12
    messages = list(store.reader("s").replay())
    by_offset = {m.offset: m for m in messages}
    for name, result in results.items():
        thread, n = (int(x) for x in name[1:].split("-"))
        expected = batch(1 + (thread + n) % 7, name, size=(thread * 31 + n) % 200)
        assert [(by_offset[o].key, by_offset[o].value) for o in result.offsets] == expected
    assert len(messages) == sum(len(r.offsets) for r in results.values())
    assert max(r.position for r in results.values()) == position == store.reader("s").position()


def test_the_same_batch_id_twice_in_one_group(store):
    """Two threads racing with one batch id: one copy, both told the same result."""
    with store.writer("s") as writer:
        barrier = threading.Barrier(4)
        outcomes: list[object] = []

        def send(messages: list[Message]) -> None:
            barrier.wait()
            try:
                outcomes.append(writer.append(messages, batch_id="same"))
            except vault_core.BatchIdConflict as error:
                outcomes.append(error)

        threads = [threading.Thread(target=send, args=(batch(3),)) for _ in range(3)]
        threads.append(threading.Thread(target=send, args=(batch(2, "other"),)))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    results = [o for o in outcomes if isinstance(o, vault_core.AppendResult)]
    conflicts = [o for o in outcomes if isinstance(o, vault_core.BatchIdConflict)]
    assert len(results) + len(conflicts) == 4 and all(r == results[0] for r in results)
    assert contents(store, "s") in (batch(3), batch(2, "other"))
    assert len(conflicts) == (1 if contents(store, "s") == batch(3) else 3)


class CountingLog:
    """A store's log, counting the data writes and commits the writer makes through the seam."""

    def __init__(self, log: object, counts: dict[str, int]) -> None:
        self._log, self._counts = log, counts

    def write(self, start, parts):
        self._counts["writes"] += 1
        return self._log.write(start, parts)

    def write_commit_slot(self, start, record):
        self._counts["commits"] += 1
        return self._log.write_commit_slot(start, record)

    def __getattr__(self, name):
        return getattr(self._log, name)


def counting(store: vault_core.Store, monkeypatch) -> dict[str, int]:
    counts = {"writes": 0, "commits": 0}
    open_log = store.open_log
    monkeypatch.setattr(store, "open_log", lambda *a, **k: CountingLog(open_log(*a, **k), counts))
    return counts


def test_append_all_commits_many_batches_at_once_each_with_its_own_outcome(store, monkeypatch):
    with store.writer("s") as writer:
        earlier = writer.append(batch(2, "earlier"), batch_id="earlier")
    counts = counting(store, monkeypatch)
    too_big = [Message("k", bytes(vault_core.format.MAX_VALUE_BYTES + 1))]
    with store.writer("s") as writer:
        before = dict(counts)
        outcomes = writer.append_all(
            [
                vault_core.Batch(batch(3, "a"), "a"),
                vault_core.Batch(too_big, "big"),  # refused alone
                vault_core.Batch(batch(2, "earlier"), "earlier"),  # already appended: its first result
                vault_core.Batch(batch(1, "b")),  # no id
                vault_core.Batch(batch(3, "a"), "a"),  # the same batch twice: one copy
                vault_core.Batch(batch(1, "not-a"), "a"),  # the id of another batch
                vault_core.Batch(batch(4, "c"), "c"),
            ]
        )
        assert counts["writes"] - before["writes"] == 1 and counts["commits"] - before["commits"] == 1
        position = writer.position
    a, big, again, b, a_twice, conflict, c = outcomes
    assert isinstance(big, vault_core.MessageTooLarge) and isinstance(conflict, vault_core.BatchIdConflict)
    assert again == earlier and a_twice == a
    assert earlier.position < a.offsets[0] < a.position < b.offsets[0] < b.position < c.offsets[0]
    assert c.position == position
    assert contents(store, "s") == batch(2, "earlier") + batch(3, "a") + batch(1, "b") + batch(4, "c")
    with store.writer("s") as writer:  # ids appended together are remembered like any other
        assert writer.append_all([vault_core.Batch(batch(4, "c"), "c")]) == [c]


def test_append_all_past_the_group_size_commits_in_order_over_several_writes(store, monkeypatch):
    batches = [vault_core.Batch([Message(f"k{i}", bytes([i]) * MiB)] * 3, f"id-{i}") for i in range(8)]
    counts = counting(store, monkeypatch)
    with store.writer("s") as writer:
        results = writer.append_all(batches)
    assert all(isinstance(r, vault_core.AppendResult) for r in results)
    assert all(r.position < n.offsets[0] < n.position for r, n in itertools.pairwise(results))
    assert 2 <= counts["commits"] - 1 < len(batches)  # 24 MiB: more than one group, fewer than eight
    assert contents(store, "s") == [m for b in batches for m in b.messages]


def test_a_new_stream_whose_first_append_is_refused_is_not_left_behind(store):
    assert not store.exists() or "s" not in store.streams()
    with store.writer("s") as writer, pytest.raises(vault_core.MessageTooLarge):
        writer.append([Message("k", bytes(MiB + 1))])
    assert "s" not in store.streams()
    with store.writer("s") as writer:  # and it can be created afterwards
        writer.append(batch(1))
    with store.writer("s") as writer, pytest.raises(vault_core.MessageTooLarge):  # an existing one stays
        writer.append([Message("k", bytes(MiB + 1))])
    assert store.streams() == ["s"] and contents(store, "s") == batch(1)
    assert store.exists()


def test_objects_beside_the_streams(store):
    store.write_file("staged/a/b", b"one")
    store.write_file("staged/a/b", b"two")  # replaced
    assert store.read_file("staged/a/b") == b"two"
    store.delete_file("staged/a/b")
    store.delete_file("staged/a/b")  # nothing to delete is fine
    with pytest.raises(FileNotFoundError):
        store.read_file("staged/a/b")
    assert store.streams() == []  # objects are not streams


def test_local_streams_are_private_to_their_owner(local_store):
    with local_store.writer("s") as writer:
        writer.append(batch(1))
    local_store.write_file("x/y", b"z")
    root = local_store.backend.root
    for path in (root, root / "s", root / "_objects", root / "_objects" / "x"):
        assert path.stat().st_mode & 0o777 == 0o700, path
    for path in (root / "s" / "log", root / "_objects" / "x" / "y"):
        assert path.stat().st_mode & 0o777 == 0o600, path
