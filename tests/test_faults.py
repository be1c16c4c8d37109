"""Faults: competing and stale writers, killed processes, damaged bytes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from azure.storage.blob import BlobLeaseClient

import vault_core
from tests.support import ROOT
from tests.support.crash_writer import batch_messages
from tests.support.damage import cut_log, flip_byte, log_blob
from vault_core import Message, framing, seek
from vault_core import format as fmt
from vault_core import reader as reader_module
from vault_core.stores.local import LocalStore


def batch(n: int, tag: str = "m") -> list[Message]:
    return [Message(f"{tag}-{i}", f"{tag}{i}".encode()) for i in range(n)]


def keys(store: vault_core.Store, stream: str) -> list[str]:
    return [m.key for m in store.reader(stream).replay()]


def test_second_writer_is_refused_at_once(store):
    with store.writer("s") as writer:
        writer.append(batch(1))
        started = time.monotonic()
        with pytest.raises(vault_core.StreamBusyError, match="another live writer"):
            store.writer("s")
        assert time.monotonic() - started < 5
        writer.append(batch(1, "still-mine"))
    assert keys(store, "s") == ["m-0", "still-mine-0"]


def test_stale_writer_is_fenced_after_takeover(azurite_store):
    store = azurite_store
    stale = store.writer("s", lease_seconds=15)
    stale.append(batch(2, "stale-before"))
    # The lease is taken from under it (as when it froze past its lease and another took over).
    BlobLeaseClient(log_blob(store, "s")).break_lease(lease_break_period=0)
    with store.writer("s") as new:
        new.append(batch(1, "new"))
        with pytest.raises(vault_core.FencedError, match="lost ownership"):
            stale.append(batch(3, "stale-after"))
        with pytest.raises(vault_core.FencedError):  # and it stays fenced
            stale.append(batch(1, "stale-again"))
        new.append(batch(1, "new-again"))
    assert keys(store, "s") == ["stale-before-0", "stale-before-1", "new-0", "new-again-0"]


def test_stale_writer_is_fenced_after_its_lease_expired(azurite_store):
    """The real thing: a writer idle past its 15 s lease while another writer took over."""
    store = azurite_store
    stale = store.writer("s", lease_seconds=15)
    stale.append(batch(1, "before"))
    time.sleep(16)
    with store.writer("s", lease_seconds=15) as new:
        new.append(batch(1, "new"))
        with pytest.raises(vault_core.FencedError):
            stale.append(batch(1, "stale"))
    assert keys(store, "s") == ["before-0", "new-0"]


def test_idle_writer_takes_its_lease_back_if_nobody_else_did(azurite_store):
    store = azurite_store
    with store.writer("s", lease_seconds=15) as writer:
        writer.append(batch(1, "before"))
        time.sleep(16)
        writer.append(batch(1, "after"))
    assert keys(store, "s") == ["before-0", "after-0"]


def test_expired_writer_is_fenced_if_the_stream_changed(azurite_store):
    store = azurite_store
    stale = store.writer("s", lease_seconds=15)
    stale.append(batch(1, "before"))
    time.sleep(16)
    with store.writer("s", lease_seconds=15) as other:  # takes over, appends, releases
        other.append(batch(1, "other"))
    with pytest.raises(vault_core.FencedError):
        stale.append(batch(1, "stale"))
    assert keys(store, "s") == ["before-0", "other-0"]


class PausingLog:
    """A writer's log whose next data write or commit waits for `go`: a request in flight."""

    def __init__(self, log: object, pause_before: str) -> None:
        self._log, self._pause_before = log, pause_before
        self.paused, self.go = threading.Event(), threading.Event()

    def write(self, start, parts):
        self._wait("write")
        return self._log.write(start, parts)

    def write_commit_slot(self, start, record):
        self._wait("commit")
        return self._log.write_commit_slot(start, record)

    def _wait(self, step: str) -> None:
        if step == self._pause_before and not self.go.is_set():
            self.paused.set()
            assert self.go.wait(30)

    def __getattr__(self, name):
        return getattr(self._log, name)


def test_takeover_fences_a_live_writer_at_once(azurite_store):
    store = azurite_store
    old = store.writer("s", lease_seconds=60)
    old.append(batch(2, "old"))
    started = time.monotonic()
    with store.writer("s", takeover=True) as new:
        assert time.monotonic() - started < 15  # not the 60 s the old lease had left
        new.append(batch(1, "new"))
        with pytest.raises(vault_core.FencedError, match="lost ownership"):
            old.append(batch(1, "late"))
        new.append(batch(1, "new-again"))
    old.close()
    assert keys(store, "s") == ["old-0", "old-1", "new-0", "new-again-0"]
    store.reader("s").verify()


@pytest.mark.parametrize("pause_before", ["write", "commit"])
def test_takeover_fences_a_write_in_flight(azurite_store, monkeypatch, pause_before):
    """The old writer is mid-append (its data written and its commit not yet sent, or its data
    not yet sent) when another takes over: its request lands after the takeover and is refused,
    and none of its bytes become visible."""
    store = azurite_store
    with store.writer("s") as writer:
        writer.append(batch(1, "before"))
    open_log = store.open_log
    logs: list[PausingLog] = []
    monkeypatch.setattr(
        store,
        "open_log",
        lambda *a, **k: logs.append(PausingLog(open_log(*a, **k), pause_before)) or logs[-1],
    )
    old = store.writer("s")
    monkeypatch.undo()
    outcome: list[object] = []
    thread = threading.Thread(target=lambda: outcome.append(_outcome(old.append, batch(50, "in-flight"))))
    thread.start()
    assert logs[0].paused.wait(30)
    with store.writer("s", takeover=True) as new:
        new.append(batch(1, "new"))
        logs[0].go.set()
        thread.join()
        assert isinstance(outcome[0], vault_core.FencedError)
        new.append(batch(1, "after"))
    assert keys(store, "s") == ["before-0", "new-0", "after-0"]
    assert store.reader("s").verify().batches == 3


def _outcome(call, *args):
    try:
        return call(*args)
    except Exception as error:
        return error


def test_takeover_fences_a_frozen_writer_process_that_resumes(azurite):
    """A writer process frozen (SIGSTOP) with its lease held is taken over at once; resumed, it
    is fenced and nothing it writes becomes visible."""
    target, container = azurite.connection_string, "frozen"
    store = vault_core.open_store(target, container=container)
    writer = start_writer(target, container, 0, 10_000)
    assert writer.stdout.readline().strip() == "ready"
    acked = [int(writer.stdout.readline().split()[1]) for _ in range(3)]
    writer.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        with store.writer("s", takeover=True) as new:
            assert time.monotonic() - started < 15  # its 15 s lease is not waited out
            taken_at = new.position
            new.append(batch(2, "new"))
            writer.send_signal(signal.SIGCONT)
            output, errors = writer.communicate(timeout=60)
            new.append(batch(1, "after"))
    finally:
        writer.kill()
    assert writer.returncode != 0 and "FencedError" in errors
    acked += [int(line.split()[1]) for line in output.splitlines()]
    old = list(store.reader("s").replay(0, end=taken_at))
    found, at = 0, 0
    while at < len(old):  # the old writer's batches, whole and in order, up to the takeover
        expected = batch_messages(found)
        assert [(m.key, m.value) for m in old[at : at + len(expected)]] == expected
        found, at = found + 1, at + len(expected)
    assert acked == list(range(len(acked))) and found in (len(acked), len(acked) + 1)
    assert [m.key for m in store.reader("s").replay(taken_at)] == ["new-0", "new-1", "after-0"]
    store.reader("s").verify()


def test_takeover_on_the_local_store_cannot_fence_a_live_holder(local_store):
    with local_store.writer("s") as holder:
        with pytest.raises(vault_core.StreamBusyError):
            local_store.writer("s", takeover=True)
        holder.append(batch(1))
    with local_store.writer("s", takeover=True) as writer:  # a free stream opens as usual
        writer.append(batch(1, "next"))
    assert keys(local_store, "s") == ["m-0", "next-0"]


def test_writers_taking_over_from_each_other_lose_and_duplicate_nothing(azurite_store):
    """Two owners that keep taking the stream from each other (as two instances briefly can while
    the runtime moves an entity): each fenced append is retried once by a new owner with the same
    batch id; every acknowledged batch is in the stream exactly once."""
    store = azurite_store
    acknowledged: dict[str, vault_core.AppendResult] = {}

    def owner(name: str) -> None:
        writer, pause = None, random.Random(name)
        for n in range(12):
            messages, batch_id = batch(1 + n % 3, f"{name}-{n}"), f"{name}-{n}"
            for _attempt in range(8):  # bounded; a busy machine fences more often
                try:
                    writer = writer or store.writer("s", takeover=True)
                    acknowledged[batch_id] = writer.append(messages, batch_id=batch_id)
                    break
                except (vault_core.FencedError, vault_core.StreamBusyError):
                    if writer is not None:
                        writer.close()
                    writer = None
                    # A fenced owner backs off a little, as a host moving an entity does: two
                    # owners that retake the stream in lockstep would fence each other forever.
                    time.sleep(pause.uniform(0, 0.05))
        if writer is not None:
            writer.close()

    threads = [threading.Thread(target=owner, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stored = list(store.reader("s").replay())
    by_offset = {m.offset: m for m in stored}
    for batch_id, result in acknowledged.items():
        n = int(batch_id.split("-")[1])
        expected = batch(1 + n % 3, batch_id)
        assert [(by_offset[o].key, by_offset[o].value) for o in result.offsets] == expected
    assert len(acknowledged) >= 12
    assert len(stored) == sum(len(r.offsets) for r in acknowledged.values())
    store.reader("s").verify()


def start_writer(target: str, container: str, first: int, last: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.crash_writer", target, container, "s", str(first), str(last)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stored_batches(store: vault_core.Store) -> list[int]:
    """The indexes of the batches in the stream, checking each is whole and in sequence."""
    messages = list(store.reader("s").replay())
    found, at = [], 0
    while at < len(messages):
        index = len(found)
        expected = batch_messages(index)
        assert [(m.key, m.value) for m in messages[at : at + len(expected)]] == expected
        found.append(index)
        at += len(expected)
    return found


@pytest.mark.parametrize("backend", ["local", "azurite"])
def test_killed_writer_loses_nothing_acknowledged_and_duplicates_nothing(backend, request, tmp_path):
    if backend == "local":
        target, container, kills = str(tmp_path / "vault"), "vault", 12
    else:
        target, container, kills = request.getfixturevalue("azurite").connection_string, "crash", 4
    store = vault_core.open_store(target, container=container)
    rng = random.Random(20261122)
    total, acked = 60, -1
    for _ in range(kills):
        writer = start_writer(target, container, acked + 1, total)
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.6))
        writer.send_signal(signal.SIGKILL)
        output, _ = writer.communicate()
        for line in output.splitlines():
            _, index, _position = line.split()
            assert int(index) == acked + 1
            acked = int(index)
        found = stored_batches(store)
        # Every acknowledged batch is there; at most the one in flight is there too, whole.
        assert len(found) in (acked + 1, acked + 2)
    writer = start_writer(target, container, acked + 1, total)  # retries the in-flight batch first
    output, _ = writer.communicate(timeout=300)
    assert writer.returncode == 0
    assert stored_batches(store) == list(range(total))


def test_flipped_byte_is_reported_with_its_position(store):
    with store.writer("s") as writer:
        first = writer.append(batch(3, "a"))
        second = writer.append(batch(3, "b"))
        writer.append(batch(3, "c"))
    flip_byte(store, "s", fmt.data_at(second.offsets[1] + 10))
    reader = store.reader("s")
    with pytest.raises(vault_core.CorruptDataError) as error:
        list(reader.replay())
    assert error.value.position == first.position  # the damaged batch starts where the first ended
    assert f"position {first.position}" in str(error.value)
    with pytest.raises(vault_core.CorruptDataError):
        reader.read(second.offsets[2])
    # Undamaged data around it still reads.
    assert [m.key for m in reader.read(0, max_messages=3).messages] == ["a-0", "a-1", "a-2"]
    assert [m.key for m in reader.read(second.position).messages] == ["c-0", "c-1", "c-2"]


def test_torn_commit_falls_back_to_the_previous_one(store):
    with store.writer("s") as writer:
        writer.append(batch(2, "a"))
        last_good = writer.append(batch(2, "b")).position
        writer.append(batch(2, "c"))  # commit 3 lands in slot 1
    flip_byte(store, "s", fmt.COMMIT_SLOTS[1] + 30)  # the newest commit is torn
    assert store.reader("s").position() == last_good
    assert keys(store, "s") == ["a-0", "a-1", "b-0", "b-1"]
    with store.writer("s") as writer:  # the next writer overwrites what was past the commit
        writer.append(batch(1, "d"))
    assert keys(store, "s") == ["a-0", "a-1", "b-0", "b-1", "d-0"]
    flip_byte(store, "s", fmt.COMMIT_SLOTS[0] + 30)
    flip_byte(store, "s", fmt.COMMIT_SLOTS[1] + 30)
    with pytest.raises(vault_core.CorruptDataError, match="both commit slots"):
        store.reader("s").position()


def test_bytes_past_the_commit_are_invisible_and_overwritten(store):
    with store.writer("s") as writer:
        position = writer.append(batch(2)).position
    # A crashed writer's uncommitted batch: valid-looking data past the committed position.
    junk_batch = fmt.prepare_batch(batch(5, "junk"))
    fmt.seal_batch(junk_batch, position=position, timestamp_ms=1)
    junk = bytes(junk_batch.buffer) + bytes(-len(junk_batch.buffer) % 512)
    if isinstance(store.backend, LocalStore):
        with open(store.backend.root / "s" / "log", "r+b") as f:
            f.seek(fmt.data_at(position))
            f.write(junk)
    else:
        blob = log_blob(store, "s")
        start = fmt.data_at(position)
        page = start - start % 512
        head = blob.download_blob(offset=page, length=start - page).readall()
        data = head + bytes(junk)
        blob.upload_page(data + bytes(-len(data) % 512), offset=page, length=len(data) + (-len(data) % 512))
    assert store.reader("s").position() == position
    assert keys(store, "s") == ["m-0", "m-1"]
    with pytest.raises(vault_core.InvalidPosition):
        store.reader("s").read(position + 100)
    with store.writer("s") as writer:
        writer.append(batch(1, "real"))
    assert keys(store, "s") == ["m-0", "m-1", "real-0"]


def test_a_copied_stream_reads_the_same_on_the_other_store(local_store, azurite_store):
    with local_store.writer("s") as writer:
        writer.append(batch(3, "local"))
        writer.append([Message(f"big-{i}", bytes([i]) * 1024 * 1024) for i in range(5)])
    data = (local_store.backend.root / "s" / "log").read_bytes()
    azurite_store.backend._container.create_container()
    blob = azurite_store.backend._container.get_blob_client("s/log")  # where streams were before segments
    size = len(data) + (-len(data) % 512)
    blob.create_page_blob(size)
    for at in range(0, size, 4 * 1024 * 1024):
        piece = data[at : at + 4 * 1024 * 1024]
        piece += bytes(-len(piece) % 512)
        blob.upload_page(piece, offset=at, length=len(piece))
    expected = list(local_store.reader("s").replay())
    assert list(azurite_store.reader("s").replay()) == expected
    with azurite_store.writer("s") as writer:  # and the copy can be written on
        writer.append(batch(1, "azure"))
    back = blob.download_blob().readall()
    os.makedirs(local_store.backend.root / "t")
    (local_store.backend.root / "t" / "log").write_bytes(back)
    assert [m.key for m in local_store.reader("t").replay()][-1] == "azure-0"
    assert list(local_store.reader("t").replay())[:-1] == expected


def _batches_to_cut(store: vault_core.Store) -> tuple[list[vault_core.AppendResult], list[int]]:
    """Forty batches of 1 to 3 messages over some 200 KiB, each with a time of its own: their
    append results, and where each starts."""
    with store.writer("s") as writer:
        results = []
        for n in range(40):
            results.append(
                writer.append([Message(f"b{n}-{i}", os.urandom(500 + 97 * n)) for i in range(1 + n % 3)])
            )
            time.sleep(0.002)
    return results, [0, *(r.position for r in results[:-1])]


def _cuts(store: vault_core.Store, starts: list[int], end: int) -> list[int]:
    """Log lengths to cut to, longest first: one byte short of the end, inside a batch header, at a
    batch start, inside a value, one byte short of a batch's end, no data at all, and into the
    reserved bytes before the data (on a blob store, each to a page boundary below)."""
    cuts = [
        fmt.data_at(end) - 1,
        fmt.data_at(starts[30]) + 20,
        fmt.data_at(starts[20]),
        fmt.data_at(starts[10]) + 1000,
        fmt.data_at(starts[4]) - 1,
        fmt.DATA_START,
        fmt.DATA_START - 100,
    ]
    if not isinstance(store.backend, LocalStore):
        cuts = sorted({cut - cut % 512 for cut in cuts}, reverse=True)
    return cuts


def _read_until_damage(
    read: Callable[[], Iterator[vault_core.StoredMessage]],
) -> tuple[list[vault_core.StoredMessage], int]:
    """The messages a read returns before it raises CorruptDataError, and the error's position."""
    messages = []
    with pytest.raises(vault_core.CorruptDataError) as damage:
        for message in read():
            messages.append(message)
    return messages, damage.value.position


def test_a_log_cut_short_is_reported_at_the_first_batch_not_wholly_in_it(
    store, monkeypatch, tmp_path, request
):
    """Wherever the log ends below the committed position, every way of reading it returns the
    batches wholly in the log, then reports the start of the first batch that is not: the same
    position whatever the size of the reads."""
    results, starts = _batches_to_cut(store)
    end = results[-1].position
    reader = store.reader("s")
    everything = list(reader.replay())

    def read_pages(max_bytes: int) -> Iterator[vault_core.StoredMessage]:
        position = 0
        while position < end:
            page = reader.read(position, max_messages=10_000, max_bytes=max_bytes)
            yield from page.messages
            position = page.next_position

    def in_batches() -> Iterator[vault_core.StoredMessage]:
        for page in reader.batches():
            yield from page.messages

    for cut in _cuts(store, starts, end):
        cut_log(store, "s", cut)
        damaged_at = next(
            start for start, r in zip(starts, results, strict=True) if fmt.data_at(r.position) > cut
        )
        before = [m for m in everything if m.offset < damaged_at]
        # Reads of a few bytes meet every boundary; on Azurite, whose requests take a millisecond
        # each, reads of hundreds of bytes do it in a fraction of the requests (the framing is
        # the same code over either store).
        tiny = (7, 64) if request.node.callspec.params["store"] == "local" else (509, 1021)
        for first, largest in [
            tiny,
            (4096, 4096),
            (framing.FIRST_CHUNK, framing.REPLAY_CHUNK),
        ]:
            monkeypatch.setattr(framing, "FIRST_CHUNK", first)
            monkeypatch.setattr(framing, "REPLAY_CHUNK", largest)
            assert _read_until_damage(reader.replay) == (before, damaged_at), (cut, first, largest)
            assert _read_until_damage(in_batches) == (before, damaged_at), (cut, first, largest)
        for slack in [reader_module.READ_SLACK, 16]:
            monkeypatch.setattr(reader_module, "READ_SLACK", slack)
            for max_bytes in [1, 5000, 4 * 1024 * 1024]:
                # A page that would reach the damage raises instead: a read answers or fails whole.
                found, position = _read_until_damage(lambda max_bytes=max_bytes: read_pages(max_bytes))
                assert position == damaged_at, (cut, slack, max_bytes)
                assert found == before[: len(found)]
                if max_bytes == 1:  # a page a message: every whole batch is read
                    assert found == before
        with pytest.raises(vault_core.CorruptDataError) as damage:
            reader.verify()
        assert damage.value.position == damaged_at
        copy = tmp_path / f"copy-{cut}"
        with pytest.raises(vault_core.CorruptDataError) as damage:
            vault_core.mirror(reader, copy)
        assert damage.value.position == damaged_at
        assert list(vault_core.open_store(copy).reader("s").replay()) == before  # the copy kept them
        # A read from a later batch start reports that batch, the first one it needs.
        with pytest.raises(vault_core.CorruptDataError) as damage:
            reader.read(starts[-1])
        assert damage.value.position == starts[-1]


@pytest.mark.parametrize("span", [seek.SEEK_SPAN, 4096])
def test_seek_time_on_a_log_cut_short_answers_only_from_whole_batches(store, monkeypatch, span):
    """A time whose first message lies in a batch wholly in the log is found as usual; one at or
    past the first batch not wholly in it is that batch's damage, at its start."""
    monkeypatch.setattr(seek, "SEEK_SPAN", span)
    monkeypatch.setattr(seek, "SEEK_PROBE", min(span, seek.SEEK_PROBE))
    results, starts = _batches_to_cut(store)
    reader = store.reader("s")
    times = [page.messages[0].timestamp_ms for page in reader.batches()]
    for cut in _cuts(store, starts, results[-1].position):
        cut_log(store, "s", cut)
        damaged = next(n for n, r in enumerate(results) if fmt.data_at(r.position) > cut)
        for n in {0, damaged - 1, damaged, damaged + 1, len(results) - 1} & set(range(len(results))):
            when = fmt.from_ms(times[n])
            if n < damaged:
                assert reader.seek_time(when) == results[n].offsets[0], (cut, n)
            else:
                with pytest.raises(vault_core.CorruptDataError) as damage:
                    reader.seek_time(when)
                assert damage.value.position == starts[damaged], (cut, n)


def test_a_writer_refuses_a_log_cut_short_even_at_a_page_boundary(store):
    """A log that lost whole pages of its tail: appending after the hole would bury the loss."""
    with store.writer("s") as writer:
        for n in range(4):
            end = writer.append(batch(40, f"b{n}")).position
        # One more batch, sized to end on a page boundary: no partial last page to miss.
        end = writer.append([vault_core.Message("k", bytes(-(end + 50) % 512 + 512))]).position
    assert fmt.data_at(end) % 512 == 0
    cut_log(store, "s", fmt.data_at(end) - 1024)
    with pytest.raises(vault_core.CorruptDataError, match="shorter than committed"):
        store.writer("s")
    with pytest.raises(vault_core.CorruptDataError):
        list(store.reader("s").replay())
