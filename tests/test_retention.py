"""A stream's retention policy: stored beside the streams, applied by the stream's writer each time
it rolls and by `Store.apply_retention` / `vault retention --apply`, keeping at least what it says
and never the newest segment. On the local store, in memory and on Azurite, with small segments."""

from __future__ import annotations

import json
import math
import time

import pytest

import vault_core
from tests.test_cli import out, vault
from tests.test_segments import SEGMENT, append, expected, stored
from vault_core import Message, Retention, StoreNotFound


@pytest.fixture(params=["local", "azurite", "memory"])
def store(request) -> vault_core.Store:
    return request.getfixturevalue(f"{request.param}_store")


def test_a_stream_keeps_everything_unless_told_otherwise(store):
    with store.writer("s", segment_bytes=SEGMENT) as writer:
        append(writer, range(100))
    assert store.retention("s") == Retention() and store.retention("s").keeps_everything
    assert len(store.backend.segments("s")) > 5 and store.reader("s").first_position() == 0
    assert store.apply_retention("s") == 0 and stored(store) == expected(range(100))


def test_the_writer_applies_the_policy_each_time_it_rolls(store):
    with store.writer("s", segment_bytes=SEGMENT) as writer:
        results = append(writer, range(20))
    store.set_retention("s", Retention(keep_bytes=3 * SEGMENT))
    assert store.retention("s") == Retention(keep_bytes=3 * SEGMENT)
    assert store.streams() == ["s"]  # the policy beside it is no stream
    with store.writer("s", segment_bytes=SEGMENT) as writer:
        results |= append(writer, range(20, 200))
        first = writer.first_position()
    end = results[199].position
    # At least what the policy keeps, and less than one segment (and the roll's batch) more.
    assert 3 * SEGMENT <= end - first < 5 * SEGMENT
    assert len(store.backend.segments("s")) <= 6
    # Every message from the start on is there, once, in order.
    kept = [i for i in range(200) if results[i].offsets[0] >= first]
    assert kept[-1] == 199 and stored(store) == expected(kept)
    assert store.reader("s").verify().position == end


def test_a_policy_by_age_lets_go_what_is_older_and_keeps_what_is_not(store):
    with store.writer("s", segment_bytes=SEGMENT) as writer:
        results = append(writer, range(60))
        time.sleep(3)
        results |= append(writer, range(60, 80))
    store.set_retention("s", Retention(keep_days=2 / 86400))  # two seconds
    first = store.apply_retention("s", dry_run=True)
    assert store.reader("s").first_position() == 0  # a dry run removes nothing
    assert store.apply_retention("s") == first == store.reader("s").first_position()
    assert results[10].position <= first <= results[60].offsets[0]  # old segments went; nothing new
    assert stored(store) == expected([i for i in range(80) if results[i].offsets[0] >= first])


def test_both_bounds_hold_when_both_are_given(local_store):
    store = local_store
    with store.writer("s", segment_bytes=SEGMENT) as writer:
        results = append(writer, range(150))
    # Keeping every day of it wins over keeping only a few bytes: nothing goes.
    store.set_retention("s", Retention(keep_bytes=100, keep_days=1))
    assert store.apply_retention("s") == 0
    store.set_retention("s", Retention(keep_bytes=100, keep_days=0))
    bases = [segment.base for segment in store.backend.segments("s")]
    assert store.apply_retention("s") == max(base for base in bases if base <= results[149].position - 100)


@pytest.mark.parametrize(
    ("fields", "error", "says"),
    [
        ({"keep_bytes": -1}, ValueError, "keep_bytes must be 0 or more"),
        ({"keep_bytes": 1.5}, TypeError, "keep_bytes"),
        ({"keep_days": math.nan}, ValueError, "keep_days must be 0 to"),
        ({"keep_days": -1}, ValueError, "keep_days must be 0 to"),
        ({"keep_days": "7"}, TypeError, "keep_days must be a number of days"),
        ({"keep_days": True}, TypeError, "keep_days must be a number of days"),
    ],
)
def test_a_bad_policy_is_refused_and_changes_nothing(local_store, fields, error, says):
    with local_store.writer("s") as writer:
        writer.append([Message("k", b"v")])
    with pytest.raises(error, match=says):
        local_store.set_retention("s", Retention(**fields))
    assert local_store.retention("s") == Retention()


def test_a_policy_needs_a_stream_and_goes_with_it(store):
    with pytest.raises(StoreNotFound, match="stream 'nope' does not exist"):
        store.set_retention("nope", Retention(keep_bytes=1))
    with pytest.raises(TypeError, match="policy must be a Retention"):
        store.set_retention("nope", {"keep_bytes": 1})  # type: ignore[arg-type]
    with store.writer("s") as writer:
        writer.append([Message("k", b"v")])
    store.set_retention("s", Retention(keep_days=7))
    store.delete_stream("s")
    with store.writer("s") as writer:
        writer.append([Message("again", b"v")])
    assert store.retention("s") == Retention()  # a stream made again under the name keeps everything


def test_a_policy_that_cannot_be_read_is_said_and_stops_no_append(local_store, caplog):
    store = local_store
    with store.writer("s", segment_bytes=SEGMENT) as writer:
        append(writer, range(10))
        store.write_file("_retention/s.json", b"{not json")
        with pytest.raises(vault_core.CorruptDataError, match="retention policy cannot be read"):
            store.retention("s")
        results = append(writer, range(10, 80))  # rolls, each failing to apply the policy
    assert "its retention policy was not applied this time" in caplog.text
    assert stored(store) == expected(range(80)) and results[79].position == store.reader("s").position()


def test_vault_retention_shows_sets_and_applies_a_policy(tmp_path):
    store = vault_core.open_store(tmp_path / "v")
    with store.writer("s", segment_bytes=SEGMENT) as writer:
        results = append(writer, range(100))
    where = ["--store", str(tmp_path / "v")]
    end = results[99].position
    shown = out(vault("retention", "s", *where))
    assert f"stream s: keep everything; it starts at 0 and ends at {end}" in shown
    refused = vault("retention", "s", *where, "--keep-bytes", "5000")  # no terminal to ask on
    assert refused.returncode != 0 and b"--confirm s" in refused.stderr
    assert store.retention("s") == Retention() and store.reader("s").first_position() == 0
    said = out(vault("retention", "s", *where, "--keep-bytes", "5000", "--keep-days", "0", "--confirm", "s"))
    first = store.reader("s").first_position()
    assert "retention set to keep at least the last 5000 bytes and the last 0 days" in said
    assert f"it starts at {first} (was 0)" in said and 5000 <= end - first < 5000 + 2 * SEGMENT
    assert store.retention("s") == Retention(keep_bytes=5000, keep_days=0)
    assert json.loads(store.read_file("_retention/s.json")) == {"keep_bytes": 5000, "keep_days": 0}
    assert "nothing to trim" in out(vault("retention", "s", *where, "--apply"))
    with store.writer("s", segment_bytes=SEGMENT) as writer:
        append(writer, range(100, 104))  # the writer keeps to it as the stream rolls
    assert "keep at least the last 5000 bytes" in out(vault("retention", "s", *where))
    both = vault("retention", "s", *where, "--keep-everything", "--keep-days", "1")
    assert both.returncode != 0 and b"contradicts" in both.stderr
    assert "retention set to keep everything" in out(vault("retention", "s", *where, "--keep-everything"))
    assert store.retention("s") == Retention()
    missing = vault("retention", "nope", *where)
    assert missing.returncode != 0 and b"stream 'nope' does not exist" in missing.stderr
    bad = vault("retention", "s", *where, "--keep-days", "-1")
    assert bad.returncode != 0 and b"--keep-days" in bad.stderr


def test_a_trimmed_stream_read_through_its_api_url_starts_where_it_starts_now(tmp_path):
    from tests.support.served import Served

    store = vault_core.open_store(tmp_path / "v")
    with store.writer("s", segment_bytes=SEGMENT) as writer:
        results = append(writer, range(100))
        first = writer.trim(results[50].position)
    server = Served(str(tmp_path / "v"), "vault")
    try:
        with vault_core.open_reader(f"{server.url}/api/streams/s") as reader:
            assert reader.first_position() == first and reader.segment_bases()[0] == first
            assert [m.key for m in reader.replay()] == [m.key for m in store.reader("s").replay()]
            with pytest.raises(vault_core.PositionTrimmed, match=f"starts at {first} now"):
                reader.read(results[1].offsets[0])
    finally:
        server.stop()
