"""Streams as chains of segments: rolls, reads across them, a writer killed at every step of a
roll, trimming, and the read URL reaching every segment. On the local store, in memory and on
Azurite, with segments of tens of KiB."""

from __future__ import annotations

import itertools
import os
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobClient, BlobType, ContainerClient

import vault_core
from vault_core import Message, PositionTrimmed
from vault_core import format as fmt
from vault_core.segments import SegmentedLog
from vault_core.stores.base import Segment
from vault_core.stores.blob import BlobLog

SEGMENT = 8 * 1024


@pytest.fixture(params=["local", "azurite", "memory"])
def store(request) -> vault_core.Store:
    return request.getfixturevalue(f"{request.param}_store")


def batch(index: int) -> list[Message]:
    """Batch `index`: 1 to 4 messages of a few hundred bytes, so a segment holds a dozen or so."""
    return [
        Message(f"k-{index}-{i}", f"{index}:{i}:".encode() * (20 + index % 17)) for i in range(1 + index % 4)
    ]


def append(writer: vault_core.StreamWriter, indexes: range) -> dict[int, vault_core.AppendResult]:
    return {i: writer.append(batch(i), batch_id=f"b-{i}") for i in indexes}


def stored(store: vault_core.Store, stream: str = "s") -> list[tuple[str, bytes]]:
    return [(m.key, m.value) for m in store.reader(stream).replay()]


def expected(indexes) -> list[tuple[str, bytes]]:
    return [(m.key, m.value) for i in indexes for m in batch(i)]


def test_a_stream_rolls_and_reads_as_one(store):
    with store.writer("s", segment_bytes=SEGMENT) as writer:
        results = append(writer, range(120))
        bases = store.backend.segments("s")
        assert len(bases) >= 4 and writer.segment_base == bases[-1].base
    reader = store.reader("s")
    assert stored(store) == expected(range(120))
    assert reader.position() == results[119].position and reader.first_position() == 0
    assert reader.verify().batches == 120
    # Each segment starts where the one before ended, at a batch of its own.
    ends = {0} | {result.position for result in results.values()}
    assert all(segment.base in ends for segment in bases)
    # Paged reads from an offset in every segment, and from each segment's first byte.
    offsets = [m.offset for m in reader.replay()]
    for segment in bases:
        inside = [o for o in offsets if o >= segment.base][:3]
        page = reader.read(inside[1], max_messages=5)
        assert page.messages[0].offset == inside[1]
        assert reader.read(segment.base, max_messages=1).messages[0].offset == inside[0]  # its first
    # A batch id from the first segment is still remembered after many rolls.
    with store.writer("s", segment_bytes=SEGMENT) as writer:
        assert writer.append(batch(3), batch_id="b-3") == results[3]
        append(writer, range(120, 130))
    assert stored(store) == expected(range(130))


def test_the_time_search_finds_the_segment_then_the_batch(store):
    times = {}
    with store.writer("s", segment_bytes=SEGMENT) as writer:
        for i in range(90):
            if i % 15 == 0:
                time.sleep(0.005)
                times[i] = datetime.now(UTC)
                time.sleep(0.005)
            writer.append(batch(i))
    reader = store.reader("s")
    offsets = [m.offset for m in reader.replay()]
    firsts = list(itertools.accumulate([0] + [len(batch(i)) for i in range(89)]))
    for i, when in times.items():
        assert reader.seek_time(when) == offsets[firsts[i]]


def test_a_read_url_reads_every_segment(store):
    with store.writer("s", segment_bytes=SEGMENT) as writer:
        append(writer, range(100))
    with store.writer("t") as writer:
        writer.append([Message("other", b"not yours")])
    url = store.read_url("s")
    reader = vault_core.open_reader(url)
    assert [(m.key, m.value) for m in reader.replay()] == expected(range(100))
    assert reader.verify().batches == 100 and len(store.backend.segments("s")) > 3


def test_an_azure_read_url_lists_and_reads_its_own_stream_only(azurite_store):
    store = azurite_store
    with store.writer("s", segment_bytes=SEGMENT) as writer:
        append(writer, range(60))
    with store.writer("t") as writer:
        writer.append([Message("other", b"not yours")])
    url = store.read_url("s")
    query = url.split("?", 1)[1]
    own = ContainerClient.from_container_url(url.split("?", 1)[0].rsplit("/", 2)[0] + "?" + query)
    assert {blob.name.split("/")[1].split(".")[0] for blob in own.list_blobs()} == {"log", "sealed"}
    other = ContainerClient.from_container_url(
        store.read_url("t").split("?", 1)[0].rsplit("/", 2)[0] + "?" + query
    )
    with pytest.raises(HttpResponseError) as refused:
        list(other.list_blobs())
    assert refused.value.status_code == 403
    with pytest.raises(HttpResponseError) as refused:
        own.get_blob_client("s/log.x").upload_blob(b"no")
    assert refused.value.status_code == 403


def test_sealed_segments_are_block_blobs_with_the_segment_s_bytes(azurite_store):
    store = azurite_store
    with store.writer("s", segment_bytes=SEGMENT) as writer:
        append(writer, range(80))
    segments = store.backend.segments("s")
    assert [segment.sealed for segment in segments] == [True] * (len(segments) - 1) + [False]
    container = store.backend._home("s")
    names = sorted(blob.name for blob in container.list_blobs())
    # Only the newest segment is still a page blob: each sealed one's page blob was removed.
    assert [name for name in names if name.startswith("s/log")] == [f"s/log.{segments[-1].base:020d}"]
    for segment, following in itertools.pairwise(segments):
        blob = container.get_blob_client(f"s/sealed.{segment.base:020d}" if segment.base else "s/sealed")
        properties = blob.get_blob_properties()
        assert properties.blob_type == BlobType.BLOCKBLOB
        assert blob.get_blob_tags() == {"vault": "sealed-segment"}  # what the lifecycle rules tier by
        data = blob.download_blob().readall()
        commit = fmt.decode_commit_record("s", data[: 2 * fmt.SLOT_SIZE])
        # Sealed at the roll: its last commit is the mark that the stream goes on at `following`.
        assert commit.rolled and commit.position == following.base
        origin = segment.base - segment.base % fmt.PAGE
        assert len(data) % fmt.PAGE == 0 and len(data) >= fmt.DATA_START + following.base - origin
        assert (
            store.reader("s").log.read(fmt.data_at(segment.base), 64)
            == data[fmt.DATA_START + segment.base - origin : fmt.DATA_START + segment.base - origin + 64]
        )


class Crash(BaseException):
    """The process dies here."""


STEPS = ["before-new-segment", "before-first-commit", "mid-copy", "before-page-blob-removed"]


def kill(writer: vault_core.StreamWriter) -> None:
    """What the OS does when a writer's process dies: its file locks go; a blob lease stays until
    it lapses (the next writer takes over instead of waiting)."""
    log = writer._log
    for source in [log._active, *[source for _segment, source in log._chain._segments]]:
        fd = getattr(source, "_fd", None)
        if isinstance(fd, int) and fd >= 0:
            os.close(fd)
            source._fd = -1


@pytest.mark.parametrize("step", STEPS[:2])
def test_a_writer_killed_at_any_step_of_a_roll_loses_and_repeats_nothing(store, step, monkeypatch):
    killed_mid_roll(store, step, monkeypatch)


@pytest.mark.parametrize("step", STEPS[2:])
def test_a_writer_killed_while_it_seals_a_segment_loses_and_repeats_nothing(azurite_store, step, monkeypatch):
    """The steps only Azure has: the local store keeps a segment's file as it is."""
    killed_mid_roll(azurite_store, step, monkeypatch)


def killed_mid_roll(store: vault_core.Store, step: str, monkeypatch: pytest.MonkeyPatch) -> None:
    blob = "BlobStore" in repr(store.backend)
    writer = store.writer("s", segment_bytes=SEGMENT)
    acknowledged = append(writer, range(40))
    assert len(store.backend.segments("s")) >= 2
    backend = store.backend

    def crash_in(name, when):
        real = getattr(type(backend), name)

        def dying(self, *args, **kwargs):
            if when(*args, **kwargs):
                if step == "mid-copy":  # a block of the copy staged, the block list never put
                    stream, log, base, _length = args
                    source = f"{log.url}?{self._sas(timedelta(minutes=5), log.container, log.blob_name)}"
                    self._sealed_blob(stream, base).stage_block_from_url(
                        "00000000", source, source_offset=0, source_length=512
                    )
                raise Crash(step)
            return real(self, *args, **kwargs)

        monkeypatch.setattr(type(backend), name, dying)

    if step == "before-new-segment":
        crash_in("open_log", lambda stream, **kw: kw.get("base", 0) > 0)
    elif step == "before-first-commit":
        monkeypatch.setattr(
            SegmentedLog, "_first_commit", lambda self, mark: (_ for _ in ()).throw(Crash(step))
        )
    elif step == "mid-copy":
        crash_in("seal", lambda *args: True)
    else:  # sealed and checked, the page blob still there

        def removing(log):
            raise Crash(step)

        monkeypatch.setattr(BlobLog, "remove", removing)
    with pytest.raises(Crash):
        for i in range(40, 400):  # a roll comes within a few dozen batches
            acknowledged[i] = writer.append(batch(i), batch_id=f"b-{i}")
    monkeypatch.undo()
    kill(writer)
    # The batch whose append rolled the stream was committed before the roll began, but the
    # process died before its producer heard: it may be there; nothing else is, and nothing twice.
    sent = max(acknowledged) + 1
    assert stored(store) == expected(range(sent + 1))
    with store.writer("s", segment_bytes=SEGMENT, takeover=True) as again:
        # Every batch sent once more (a producer retrying): none is stored twice.
        for i in range(sent + 1):
            result = again.append(batch(i), batch_id=f"b-{i}")
            assert result == acknowledged.get(i, result)
        last = sent
        append(again, range(last + 1, last + 40))
    assert stored(store) == expected(range(last + 40))
    assert store.reader("s").verify().batches == last + 40
    if blob:  # the roll the crash cut short was finished: no segment left half sealed
        segments = store.backend.segments("s")
        assert all(segment.sealed for segment in segments[:-1])


def test_appends_go_on_while_the_segment_left_behind_is_sealed(store, monkeypatch):
    """Sealing copies a whole segment, TiBs at the default size: the writer's appends must not
    wait for it. Here a seal is held until appends into the new segment were acknowledged."""
    sealing, release = threading.Event(), threading.Event()
    real = type(store.backend).seal

    def held(self, *args):
        sealing.set()
        assert release.wait(60)
        return real(self, *args)

    monkeypatch.setattr(type(store.backend), "seal", held)
    with store.writer("s", segment_bytes=SEGMENT) as writer:
        try:
            for i in range(400):
                writer.append(batch(i), batch_id=f"b-{i}")
                if writer.segment_base > 0:  # rolled: the seal of segment 0 is on its way
                    break
            assert sealing.wait(60)
            rolled_at = writer.segment_base
            append(writer, range(i + 1, i + 4))  # less than a segment: no roll waits
            assert writer.segment_base == rolled_at
            if "BlobStore" in repr(store.backend):  # the others list every older segment as sealed
                assert not store.backend.segments("s")[0].sealed
            assert stored(store) == expected(range(i + 4))
        finally:
            release.set()
    # Closing the writer waited for the seal.
    segments = store.backend.segments("s")
    assert len(segments) >= 2 and all(segment.sealed for segment in segments[:-1])
    assert stored(store) == expected(range(i + 4))


def test_trimming_removes_whole_segments_below_a_position(store):
    with store.writer("s", segment_bytes=SEGMENT) as writer:
        results = append(writer, range(100))
        segments = store.backend.segments("s")
        cut = segments[3].base + 1  # inside the fourth segment: the first three go
        assert writer.trim(cut) == segments[3].base == writer.first_position()
        assert [s.base for s in store.backend.segments("s")] == [s.base for s in segments[3:]]
        # Trimming never removes the newest segment, however far it is asked to.
        assert writer.trim(results[99].position + 10) == segments[-1].base
        first = writer.first_position()
        # A batch id of a trimmed batch is forgotten: sent again, it is a new batch.
        assert writer.append(batch(0), batch_id="b-0").position > results[99].position
    reader = store.reader("s")
    assert reader.first_position() == first
    messages = list(reader.replay())
    assert first < messages[0].offset < first + 100  # the first record of the batch at `first`
    assert [(m.key, m.value) for m in messages] == expected(
        [*[i for i in range(100) if results[i].offsets[0] >= first], 0]
    )
    with pytest.raises(PositionTrimmed, match=f"starts at {first} now"):
        reader.read(results[1].offsets[0])
    assert reader.read(0, max_messages=1).messages[0].offset == messages[0].offset
    assert reader.verify().position == reader.position()


def test_a_consumer_group_whose_checkpoint_was_trimmed_resumes_from_the_start(store):
    with store.writer("s", segment_bytes=SEGMENT) as writer:
        results = append(writer, range(100))
    with store.checkpoints("projection") as checkpoints:
        checkpoints.save("s", results[2].position, expected=None)
    with store.writer("s", segment_bytes=SEGMENT) as writer:
        first = writer.trim(results[60].position)
    (lag,) = vault_core.group_lags(store, "projection")
    assert lag.trimmed_bytes == first - results[2].position
    assert lag.lag_bytes == results[99].position - first
    with store.checkpoints("projection") as checkpoints:
        consumer = vault_core.Consumer(store.reader("s"), checkpoints)
        batches = consumer.batches()
        assert next(batches).messages[0].offset == store.reader("s").read(0).messages[0].offset > first
        batches.close()


def test_a_stream_made_before_segments_is_read_and_written_where_it_is(azurite_store, tmp_path):
    """One page blob `<stream>/log` in the store's container, as every stream was: opened,
    appended and read there, read by its blob read URL, and never rolled."""
    local = vault_core.open_store(tmp_path / "old")
    with local.writer("old") as writer:
        append(writer, range(30))
    data = (tmp_path / "old" / "old" / "log").read_bytes()
    store = azurite_store
    container = store.backend._container
    container.create_container()
    page = container.get_blob_client("old/log")
    page.create_page_blob(4 * 1024 * 1024)
    page.upload_page(data + bytes(-len(data) % 512), offset=0, length=len(data) + -len(data) % 512)
    assert stored(store, "old") == expected(range(30))
    with store.writer("old", segment_bytes=SEGMENT) as writer:
        append(writer, range(30, 90))
    assert stored(store, "old") == expected(range(90))
    assert store.backend.segments("old") == [Segment(0)] and store.streams() == ["old"]
    url = store.read_url("old")
    assert "sr=b" in url and [(m.key, m.value) for m in vault_core.open_reader(url).replay()] == expected(
        range(90)
    )
    assert BlobClient.from_blob_url(url).get_blob_properties().blob_type == BlobType.PAGEBLOB


def test_segment_bytes_is_checked(local_store):
    with pytest.raises(ValueError, match="segment_bytes must be 4096 to"):
        local_store.writer("s", segment_bytes=100)
    assert not local_store.has_stream("s")


def test_a_stream_is_never_made_in_a_container_that_is_not_its_own(azurite_store):
    """`<store>-staging` may be the staged batches' container: a stream named "staging" must not
    move in. A stream deleted and made again gets its container back, and is listed only then."""
    store = azurite_store
    store.backend._service.create_container(f"{store.backend.container}-staging")
    with pytest.raises(vault_core.VaultError, match="exists and is not that stream's"):
        store.writer("staging")
    with store.writer("s", segment_bytes=SEGMENT) as writer:
        append(writer, range(40))
    store.delete_stream("s")
    assert store.streams() == [] and not store.has_stream("s")
    with store.writer("s") as writer:
        writer.append([Message("again", b"new")])
    assert store.streams() == ["s"] and stored(store) == [("again", b"new")]


def test_vault_trim_and_vault_groups(tmp_path):
    from tests.test_cli import out, vault

    store = vault_core.open_store(tmp_path / "v")
    with store.writer("s", segment_bytes=SEGMENT) as writer:
        results = append(writer, range(100))
    with store.checkpoints("reports") as checkpoints:
        checkpoints.save("s", results[1].position, expected=None)
    where = str(tmp_path / "v")
    segments = len(store.backend.segments("s"))
    shown = out(vault("trim", "s", "--store", where))  # without a position: where it starts and ends
    assert f"starts at 0 and ends at {results[99].position}, in {segments} segment(s)" in shown
    refused = vault("trim", "s", "--store", where, "--keep-bytes", "1000")
    assert refused.returncode != 0 and b"--confirm s" in refused.stderr
    assert store.reader("s").first_position() == 0  # nothing changed
    both = vault("trim", "s", "--store", where, "--keep-bytes", "1", "--before", "5")
    assert both.returncode != 0 and b"contradict" in both.stderr
    said = out(vault("trim", "s", "--store", where, "--keep-bytes", "5000", "--confirm", "s"))
    first = store.reader("s").first_position()
    assert f"it starts at {first} (was 0)" in said and results[99].position - first >= 5000
    (line,) = out(vault("groups", "--store", where, "--json")).splitlines()
    import json

    lag = json.loads(line)
    assert (
        lag["trimmed_bytes"] == first - results[1].position
        and lag["lag_bytes"] == results[99].position - first
    )
    assert "lost to trimming" in out(vault("groups", "--store", where))


def test_a_segmented_and_trimmed_stream_mirrors_and_resumes(store, tmp_path):
    with store.writer("s", segment_bytes=SEGMENT) as writer:
        results = append(writer, range(80))
        first = writer.trim(results[30].position)
    copy = vault_core.mirror(store.reader("s"), tmp_path / "copy")
    mirrored = vault_core.open_store(tmp_path / "copy")
    assert copy.position == results[79].position and mirrored.reader("s").first_position() == first
    assert stored(mirrored) == stored(store) and mirrored.reader("s").verify().position == copy.position
    with store.writer("s", segment_bytes=SEGMENT) as writer:
        append(writer, range(80, 120))
    again = vault_core.mirror(store.reader("s"), tmp_path / "copy")
    assert again.start == copy.position and stored(mirrored) == stored(store)


def test_the_api_describes_a_stream_s_segments_and_start(local_store):
    from vault_core.service import describe_stream

    with local_store.writer("s", segment_bytes=SEGMENT) as writer:
        results = append(writer, range(80))
        first = writer.trim(results[30].position)
    info = describe_stream(local_store, "s")
    assert (info.first_position, info.segments) == (first, len(local_store.backend.segments("s")))
    assert info.segments > 1 and info.position == results[79].position
