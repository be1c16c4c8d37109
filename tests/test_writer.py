"""The single writer, above the backend seam, on the in-memory store: appends, batch ids, group
commit and fencing, fast enough to run on every change."""

from __future__ import annotations

import threading
import time

import pytest

import vault_core
from vault_core import Batch, BatchIdConflict, FencedError, Message, StreamBusyError, StreamWriter


def batch(n: int, tag: str = "m") -> list[Message]:
    return [Message(f"{tag}-{i}", f"{tag}:{i}".encode()) for i in range(n)]


class CountingLog:
    """A memory log that counts the writes the writer makes through the seam; `write_seconds`
    makes each data write take as long as a storage round trip would."""

    def __init__(self, log, write_seconds: float = 0.0):
        self._log = log
        self.created = log.created
        self.write_seconds = write_seconds
        self.data_writes = 0
        self.commits = 0

    def write(self, start, parts):
        self.data_writes += 1
        time.sleep(self.write_seconds)
        self._log.write(start, parts)

    def write_commit_slot(self, start, record):
        self.commits += 1
        self._log.write_commit_slot(start, record)

    def __getattr__(self, name):
        return getattr(self._log, name)


def test_appends_are_visible_whole_in_order_and_positions_grow(memory_store):
    with memory_store.writer("s") as writer:
        first = writer.append(batch(3, "a"))
        second = writer.append(batch(2, "b"))
        assert writer.position == second.position > first.position
        assert second.offsets[0] > first.offsets[-1]
    assert [m.key for m in memory_store.reader("s").replay()] == ["a-0", "a-1", "a-2", "b-0", "b-1"]


def test_a_batch_id_appends_once_and_a_reused_one_for_other_messages_is_refused(memory_store):
    with memory_store.writer("s") as writer:
        first = writer.append(batch(2), batch_id="order-1")
        assert writer.append(batch(2), batch_id="order-1") == first
        with pytest.raises(BatchIdConflict):
            writer.append(batch(3), batch_id="order-1")
        position = writer.position
    with memory_store.writer("s") as again:  # a later writer remembers it too
        assert again.append(batch(2), batch_id="order-1") == first and again.position == position
    assert len(list(memory_store.reader("s").replay())) == 2


def test_append_all_commits_together_with_an_outcome_per_batch(memory_store):
    log = CountingLog(memory_store.open_log("s", lease_seconds=60))
    writer = StreamWriter("s", log)
    commits = log.commits
    outcomes = writer.append_all(
        [Batch(batch(2, "a"), "a"), Batch([Message("k" * 300, b"")], None), Batch(batch(1, "b"), None)]
    )
    assert isinstance(outcomes[1], ValueError)  # a key over 255 bytes: refused alone
    assert all(isinstance(o, vault_core.AppendResult) for o in (outcomes[0], outcomes[2]))
    assert log.commits - commits == 1  # one commit for the lot
    writer.close()
    assert [m.key for m in memory_store.reader("s").replay()] == ["a-0", "a-1", "b-0"]


def test_threads_sharing_one_writer_share_commits(memory_store):
    """While one group commit waits on storage, the others' appends queue and go in the next."""
    log = CountingLog(memory_store.open_log("s", lease_seconds=60), write_seconds=0.005)
    writer = StreamWriter("s", log)
    start = threading.Barrier(8)

    def produce(t: int) -> None:
        start.wait()
        for n in range(20):
            writer.append(batch(2, f"t{t}-{n}"), batch_id=f"t{t}-{n}")

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.close()
    stored = [m.key for m in memory_store.reader("s").replay()]
    assert len(stored) == 8 * 20 * 2 and len(set(stored)) == len(stored)
    for t in range(8):  # each producer's batches in its order
        mine = [key for key in stored if key.startswith(f"t{t}-")]
        assert mine == [f"t{t}-{n}-{i}" for n in range(20) for i in range(2)]
    # 160 appends, each waited for alone, would take 160 commits; queued behind one another's
    # storage writes, they share (about 90 here; the more producers wait, the fewer).
    assert log.commits < 0.75 * 8 * 20


class PipelineLog(CountingLog):
    """A memory log whose next commit, once armed, is held on its way until a data write starts
    behind it, and then lands (and, with `lose`, its answer is lost)."""

    def __init__(self, log, *, lose: bool = False):
        super().__init__(log)
        self.lose = lose
        self.armed = False
        self.holding = threading.Event()
        self.written_behind = threading.Event()
        self.events: list[str] = []

    def write(self, start, parts):
        self.events.append("data")
        super().write(start, parts)
        if self.holding.is_set():
            self.written_behind.set()

    def write_commit_slot(self, start, record):
        if not self.armed:
            self.events.append("commit")
            return super().write_commit_slot(start, record)
        self.armed = False
        self.events.append("commit held")
        self.holding.set()
        assert self.written_behind.wait(10), "no data was written while a commit was in flight"
        super().write_commit_slot(start, record)
        self.events.append("commit landed")
        if self.lose:
            raise ConnectionResetError("the commit's answer was lost")


def append_behind_a_held_commit(log: PipelineLog, writer: StreamWriter) -> list[object]:
    """Append "a" (whose commit is held) and, while it is in flight, "b"; each one's outcome."""
    outcomes: list[object] = [None, None]

    def append(index: int, key: str) -> None:
        try:
            outcomes[index] = writer.append([Message(key, b"v")], batch_id=key)
        except Exception as error:
            outcomes[index] = error

    log.armed = True
    first = threading.Thread(target=append, args=(0, "a"))
    first.start()
    assert log.holding.wait(10)
    append(1, "b")
    first.join(10)
    return outcomes


def test_the_next_groups_data_is_written_while_a_commit_is_in_flight(memory_store):
    log = PipelineLog(memory_store.open_log("s", lease_seconds=60))
    writer = StreamWriter("s", log)
    writer.append([Message("first", b"v")])
    del log.events[:]
    a, b = append_behind_a_held_commit(log, writer)
    # b's data went to storage while a's commit was on its way; b's commit only after a's landed.
    assert log.events == ["data", "commit held", "data", "commit landed", "commit"]
    assert a.position < b.position == writer.position
    writer.close()
    assert [m.key for m in memory_store.reader("s").replay()] == ["first", "a", "b"]


def test_a_commit_that_fails_in_flight_fails_the_group_behind_it_and_retries_store_each_once(memory_store):
    log = PipelineLog(memory_store.open_log("s", lease_seconds=60), lose=True)
    writer = StreamWriter("s", log)
    a, b = append_behind_a_held_commit(log, writer)
    # a's commit landed but its answer was lost; b was written behind it and never committed.
    assert isinstance(a, ConnectionResetError) and b is a
    assert writer.position == 0  # nothing is acknowledged
    retried_b = writer.append([Message("b", b"v")], batch_id="b")
    retried_a = writer.append([Message("a", b"v")], batch_id="a")  # found: it had landed
    assert retried_a.position < retried_b.position == writer.position
    writer.close()
    assert [m.key for m in memory_store.reader("s").replay()] == ["a", "b"]


def test_a_second_writer_is_refused_and_a_takeover_fences_the_first(memory_store):
    first = memory_store.writer("s")
    first.append(batch(1, "first"))
    with pytest.raises(StreamBusyError):
        memory_store.writer("s")
    second = memory_store.writer("s", takeover=True)
    with pytest.raises(FencedError):
        first.append(batch(1, "fenced"))
    second.append(batch(1, "second"))
    second.close()
    first.close()
    assert [m.key for m in memory_store.reader("s").replay()] == ["first-0", "second-0"]


def test_a_refused_first_append_leaves_no_stream(memory_store):
    with memory_store.writer("s") as writer, pytest.raises(ValueError):
        writer.append([Message("k", b"x" * (1024 * 1024 + 1))])
    assert memory_store.streams() == []
