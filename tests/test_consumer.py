"""Consumer groups above the backend seam, on the in-memory store: a checkpoint per group and
stream, moved past each batch handled, resumed from, guarded against a second consumer, and an
exclusive claim that one consumer of a group holds at a time."""

from __future__ import annotations

import threading
import time

import pytest

from vault_core import CheckpointConflict, Consumer, Message, group_lags


def fill(store, batches: int = 4, size: int = 5) -> None:
    with store.writer("s") as writer:
        for n in range(batches):
            writer.append([Message(f"b{n}-{i}", b"v") for i in range(size)])


def keys(results) -> list[str]:
    return [m.key for result in results for m in result.messages]


def test_a_group_resumes_after_the_last_batch_it_handled(memory_store):
    fill(memory_store)
    with memory_store.checkpoints("billing") as checkpoints:
        first = Consumer(memory_store.reader("s"), checkpoints)
        taken = []
        for result in first.batches():
            taken.append(result)
            if len(taken) == 2:
                break  # stopped while holding the second batch: it was not finished
        again = Consumer(memory_store.reader("s"), checkpoints)
        assert keys(again.batches())[0] == "b1-0"  # the unfinished batch comes again
        assert list(Consumer(memory_store.reader("s"), checkpoints).batches()) == []  # all handled
    [lag] = group_lags(memory_store, "billing")
    assert lag.lag_bytes == 0 and lag.checkpoint == memory_store.reader("s").position()


def test_commit_inside_a_batch_resumes_at_that_message(memory_store):
    fill(memory_store, batches=1, size=5)
    with memory_store.checkpoints("g") as checkpoints:
        consumer = Consumer(memory_store.reader("s"), checkpoints)
        for result in consumer.batches():
            consumer.commit(result.messages[3].offset)
            break
        assert keys(Consumer(memory_store.reader("s"), checkpoints).batches()) == ["b0-3", "b0-4"]


def test_a_new_group_starts_where_told_and_groups_are_apart(memory_store):
    fill(memory_store)
    with memory_store.checkpoints("a") as a, memory_store.checkpoints("b") as b:
        second = memory_store.reader("s").read(0, max_messages=5).next_position
        assert keys(Consumer(memory_store.reader("s"), a, start=second).batches())[0] == "b1-0"
        assert keys(Consumer(memory_store.reader("s"), b).batches())[0] == "b0-0"


def test_two_consumers_of_one_group_cannot_both_move_the_checkpoint(memory_store):
    fill(memory_store)
    with memory_store.checkpoints("g") as checkpoints:
        one = Consumer(memory_store.reader("s"), checkpoints)
        two = Consumer(memory_store.reader("s"), checkpoints)
        assert one.position == two.position == 0  # both loaded the same (no) checkpoint
        one.commit(memory_store.reader("s").read(0, max_messages=5).next_position)
        with pytest.raises(CheckpointConflict):
            two.commit(memory_store.reader("s").read(0, max_messages=10).next_position)


def test_an_exclusive_consumer_waits_while_another_holds_the_stream(memory_store):
    fill(memory_store, batches=2)
    with memory_store.checkpoints("g") as checkpoints:
        holder = Consumer(memory_store.reader("s"), checkpoints, exclusive=True, lease_seconds=30)
        held = holder.batches()
        next(held)  # holds the claim while iterating
        waited: list[str] = []

        def wait_then_read() -> None:
            other = Consumer(memory_store.reader("s"), checkpoints, exclusive=True, lease_seconds=30)
            waited.extend(keys(other.batches(poll_interval=0.02)))

        thread = threading.Thread(target=wait_then_read)
        thread.start()
        time.sleep(0.2)
        assert waited == [] and thread.is_alive()  # still waiting for the claim
        held.close()  # the holder stops before finishing its first batch: the claim is given up
        thread.join(10)
    assert waited[:5] == [f"b0-{i}" for i in range(5)]  # the unfinished batch, again
