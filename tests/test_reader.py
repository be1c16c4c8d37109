"""The reader, above the backend seam, on the in-memory store: paged reads, replay, following,
batches with their headers and the time search."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from vault_core import InvalidPosition, Message


def batch(n: int, tag: str) -> list[Message]:
    return [Message(f"{tag}-{i}", f"{tag}:{i}".encode() * 10) for i in range(n)]


@pytest.fixture
def filled(memory_store):
    """Stream s: five batches of ten messages (batch ids b0..b4)."""
    with memory_store.writer("s") as writer:
        results = [writer.append(batch(10, f"b{n}"), batch_id=f"b{n}") for n in range(5)]
    return memory_store.reader("s"), results


def test_read_pages_by_count_and_bytes_and_resumes_where_it_stopped(filled):
    reader, results = filled
    page = reader.read(0, max_messages=7)
    assert [m.key for m in page.messages] == [f"b0-{i}" for i in range(7)]
    rest = reader.read(page.next_position, max_messages=100)
    assert rest.messages[0].key == "b0-7" and len(rest.messages) == 43
    assert rest.next_position == reader.position() == results[-1].position
    small = reader.read(0, max_bytes=1)  # at least one message, however small the limit
    assert len(small.messages) == 1


def test_a_position_inside_a_record_or_past_the_end_is_refused(filled):
    reader, results = filled
    with pytest.raises(InvalidPosition, match="not a record boundary"):
        reader.read(results[0].offsets[0] + 1)
    with pytest.raises(InvalidPosition, match="outside stream"):
        reader.read(reader.position() + 1)


def test_a_replay_ends_where_asked_and_refuses_an_end_that_is_not_a_position(filled):
    reader, results = filled
    assert [m.key for m in reader.replay(0, end=results[0].position)] == [f"b0-{i}" for i in range(10)]
    with pytest.raises(InvalidPosition, match="outside stream"):
        reader.replay(0, end=reader.position() + 1)
    with pytest.raises(TypeError, match="end must be an int, got bool"):
        reader.replay(0, end=True)


def test_headed_batches_give_each_batch_with_its_id(filled):
    reader, results = filled
    seen = [(header.batch_id, [m.key for m in messages]) for header, messages in reader.headed_batches()]
    assert [batch_id for batch_id, _ in seen] == [b"b0", b"b1", b"b2", b"b3", b"b4"]
    assert seen[2][1] == [f"b2-{i}" for i in range(10)]
    # From a batch start (where the batch before it ends) to a position: the batches between.
    between = reader.headed_batches(results[1].position, results[3].position)
    assert [header.batch_id for header, _ in between] == [b"b2", b"b3"]


def test_follow_yields_what_is_appended_later_once_each(memory_store):
    with memory_store.writer("s") as writer:
        writer.append(batch(2, "before"))
        got: list[str] = []
        follower = memory_store.reader("s").follow(0, poll_interval=0.01)

        def follow() -> None:
            for message in follower:
                got.append(message.key)
                if len(got) == 6:
                    return

        thread = threading.Thread(target=follow)
        thread.start()
        time.sleep(0.05)
        writer.append(batch(4, "after"))
        thread.join(5)
    assert got == ["before-0", "before-1", "after-0", "after-1", "after-2", "after-3"]


def test_seek_time_finds_the_first_message_at_or_after_a_time(memory_store):
    with memory_store.writer("s") as writer:
        writer.append(batch(3, "early"))
        time.sleep(0.01)
        middle = datetime.now(UTC)
        time.sleep(0.01)
        later = writer.append(batch(3, "late"))
    reader = memory_store.reader("s")
    assert reader.seek_time(middle) == later.offsets[0]
    first = next(iter(reader.replay())).offset
    assert reader.seek_time(middle - timedelta(days=1)) == first
    assert reader.seek_time(datetime.now(UTC) + timedelta(days=1)) == reader.position()
