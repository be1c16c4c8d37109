"""What both hosts share, on the in-memory store: one writer per stream, which a host replaces,
once, when another writer has fenced it."""

from __future__ import annotations

import pytest

from vault_core import AppendResult, Batch, BatchIdConflict, FencedError, Message
from vault_core import format as fmt
from vault_core.service import Writers


def messages(tag: str) -> list[Message]:
    return [Message(tag, tag.encode())]


def test_an_append_fenced_by_a_takeover_goes_once_more_through_a_writer_opened_afresh(memory_store):
    writers = Writers(memory_store)
    writers.append("s", fmt.prepare_batch(messages("first"), b"b-1"))
    fenced = writers.writer("s")
    memory_store.writer("s", takeover=True).close()  # another host took the stream over, and left
    result = writers.append("s", fmt.prepare_batch(messages("second"), b"b-2"))
    assert writers.writer("s") is not fenced
    assert result.position == memory_store.reader("s").position()
    assert [m.key for m in memory_store.reader("s").replay()] == ["first", "second"]
    writers.close()


def test_of_batches_appended_together_only_the_fenced_go_again_and_each_keeps_its_outcome(memory_store):
    writers = Writers(memory_store, takeover=True)
    writers.append_all("s", [Batch(messages("first"), "b-1")])
    fenced = writers.writer("s")
    memory_store.writer("s", takeover=True).close()
    outcomes = writers.append_all(
        "s", [Batch(messages("second"), "b-2"), Batch(messages("other"), "b-1"), Batch(messages("third"))]
    )
    assert isinstance(outcomes[0], AppendResult) and isinstance(outcomes[2], AppendResult)
    assert isinstance(outcomes[1], BatchIdConflict)  # answered by the fresh writer's record of b-1
    assert writers.writer("s") is not fenced
    assert [m.key for m in memory_store.reader("s").replay()] == ["first", "second", "third"]
    writers.close()


def test_an_error_other_than_fencing_keeps_the_writer_and_is_not_retried(memory_store):
    writers = Writers(memory_store)
    writers.append("s", fmt.prepare_batch(messages("first"), b"b-1"))
    writer = writers.writer("s")
    with pytest.raises(BatchIdConflict):
        writers.append("s", fmt.prepare_batch(messages("other"), b"b-1"))
    assert writers.writer("s") is writer
    assert [m.key for m in memory_store.reader("s").replay()] == ["first"]
    writers.close()


def test_a_writer_fenced_again_after_its_one_retry_answers_the_fencing(memory_store):
    writers = Writers(memory_store, takeover=True)
    writers.append_all("s", [Batch(messages("first"), "b-1")])
    calls = []

    def fenced_every_time(writer, batches):
        calls.append(writer)
        memory_store.writer("s", takeover=True).close()
        return writer.append_all(batches)

    (outcome,) = writers._append_with("s", [Batch(messages("lost"), "b-2")], fenced_every_time)
    assert isinstance(outcome, FencedError)
    assert len(calls) == 2 and calls[0] is not calls[1]
    assert [m.key for m in memory_store.reader("s").replay()] == ["first"]
    writers.close()
