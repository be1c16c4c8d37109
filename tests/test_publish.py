"""`vault publish` as a user runs it (a subprocess, a real `vault serve`, a full disk): interrupted
and run again, it stores each line once; a store that is not there is an error; a full or
read-only disk is a message that says what to do, and the retry completes the stream exactly."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import vault_core
from tests.support.azurite import Azurite
from tests.support.served import Served
from tests.test_cli import VAULT, json_lines, lines_of, vault
from vault_core.client import VaultClient

_containers = itertools.count()
ROWS = [(f"key-{i % 7}", f"event {i} ".encode() * (1 + i % 4)) for i in range(6000)]


def stored(store: vault_core.Store, stream: str) -> list[tuple[str, bytes]]:
    return [(m.key, m.value) for m in store.reader(stream).replay()] if stream in store.streams() else []


def interrupt(
    args: list[str], store: vault_core.Store, stream: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Start `vault ARGS`, press Ctrl-C (SIGINT) once some of it is committed, wait for it."""
    process = subprocess.Popen(
        [VAULT, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "VAULT_STORE": "", **(env or {})},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if stream in store.streams() and store.reader(stream).position() > 0:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@contextlib.contextmanager
def publishing(
    tmp_path: Path, via: str, azurite: Azurite | None = None
) -> Iterator[tuple[list[str], vault_core.Store, Served | None]]:
    """The arguments of `vault publish events <ROWS as a file>` in batches of 5, to a store
    ("store"; "azurite": a container of its own there) or through a `vault serve` on a local
    store ("url"); the store; the server, if any."""
    source = tmp_path / "events.jsonl"
    source.write_text(lines_of(ROWS))
    root = tmp_path / "vault"
    served = Served(str(root), "vault") if via == "url" else None
    if via == "azurite":
        assert azurite is not None
        container = f"publish-{next(_containers)}"
        store = vault_core.open_store(azurite.connection_string, container=container)
        where = ["--store", azurite.connection_string, "--container", container]
    else:
        store = vault_core.open_store(root)
        where = ["--url", served.url] if served else ["--store", str(root)]
    try:
        yield (["publish", "events", str(source), "--batch-size", "5", *where], store, served)
    finally:
        if served:
            served.stop()


@pytest.mark.parametrize("via", ["store", "url"])
def test_an_interrupted_publish_run_again_stores_each_line_once(tmp_path, via):
    with publishing(tmp_path, via) as (args, store, _):
        source = args[2]
        first = interrupt(args, store, "events")
        assert first.returncode == 130, first.stderr.decode()
        said = re.search(
            r"interrupted: lines 1 to ([\d,]+) of the 6,000 of .*events.jsonl are in events; "
            r"run the same command again",
            first.stderr.decode(),
        )
        assert said, first.stderr.decode()
        acknowledged = int(said[1].replace(",", ""))
        held = len(stored(store, "events"))
        # Ctrl-C stops it after the batch in flight: what it says is committed is exact.
        assert "stopping after the batch in flight" in first.stderr.decode()
        assert held == acknowledged < len(ROWS)
        assert stored(store, "events") == ROWS[:held]

        again = vault(*args)
        assert again.returncode == 0, again.stderr.decode()
        assert f"resuming: the first {held:,} lines of {source}" in again.stderr.decode()
        assert stored(store, "events") == ROWS  # every line once, in order

        third = vault(*args)
        assert third.returncode == 0 and "nothing to publish" in third.stdout.decode()
        assert len(stored(store, "events")) == len(ROWS)


@pytest.mark.parametrize("via", ["store", "url"])
def test_a_publish_resumes_even_after_more_than_the_streams_batch_ids_were_appended(tmp_path, via):
    """Over 1,024 batches from elsewhere push the input's batch ids out of the stream's memory:
    the progress record (beside the stream, or in the user's state folder for the HTTP API) still
    knows where to resume."""
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    with publishing(tmp_path, via) as (args, store, served):
        assert interrupt(args, store, "events", env).returncode == 130
        held = len(stored(store, "events"))
        others = [[vault_core.Message("other", b"%d" % n)] for n in range(1100)]
        if served:
            with VaultClient(served.url) as client:
                for batch in others:
                    client.publish("events", batch)
        else:
            with store.writer("events") as writer:
                for batch in others:
                    writer.append(batch)
        assert vault(*args, env=env).returncode == 0
    mine = [row for row in stored(store, "events") if row[0] != "other"]
    assert mine == ROWS and len(stored(store, "events")) == len(ROWS) + 1100 and held < len(ROWS)


def test_a_progress_record_of_a_stream_made_again_does_not_count(tmp_path):
    source = tmp_path / "events.jsonl"
    source.write_text(lines_of(ROWS[:400]))
    root = tmp_path / "vault"
    args = ["publish", "events", str(source), "--batch-size", "5", "--store", str(root)]
    assert vault(*args).returncode == 0
    shutil.rmtree(root / "events")  # the stream removed by hand; its progress record stays
    with vault_core.open_store(root).writer("events") as writer:  # and made again, other data
        for n in range(1100):
            writer.append([vault_core.Message("other", b"%d" % n)])
    again = vault(*args)
    assert again.returncode == 0 and "published 400 messages" in again.stdout.decode()
    mine = [row for row in stored(vault_core.open_store(root), "events") if row[0] != "other"]
    assert mine == ROWS[:400]


def test_the_same_input_from_stdin_is_the_same_publish_and_again_publishes_anew(local_store):
    where = ["--store", str(local_store.backend.root)]
    text = lines_of(ROWS[:30])
    assert vault("publish", "s", "-", *where, input=text).returncode == 0
    repeated = vault("publish", "s", "-", *where, input=text)
    assert (
        repeated.returncode == 0
        and "nothing to publish: all 30 messages of stdin" in repeated.stdout.decode()
    )
    assert vault("publish", "s", "-", "--again", *where, input=text).returncode == 0
    assert stored(local_store, "s") == ROWS[:30] * 2


def test_publishing_to_a_store_whose_parent_is_missing_creates_nothing(tmp_path):
    source = tmp_path / "one.jsonl"
    source.write_text(lines_of(ROWS[:1]))
    missing = tmp_path / "no-such-folder" / "vault"
    result = vault("publish", "s", str(source), "--store", str(missing))
    assert result.returncode == 1
    assert (
        f"no store at {missing}, and its parent folder {missing.parent} does not exist"
        in result.stderr.decode()
    )
    assert not missing.parent.exists()
    created = vault("publish", "s", str(source), "--store", str(tmp_path / "new-vault"))
    assert created.returncode == 0  # a new store in an existing folder is fine
    assert oct((tmp_path / "new-vault").stat().st_mode & 0o777) == "0o700"


def test_reading_what_is_not_there_is_an_error(tmp_path):
    for args, says in [
        (["streams", "--store", str(tmp_path / "nothing")], f"no store at {tmp_path / 'nothing'}"),
        (
            ["read", "s", "--url", f"file://{tmp_path}/missing/s/log"],
            f"no stream at file://{tmp_path}/missing/s/log",
        ),
        (["read", "s", "--store", str(tmp_path / "nothing")], "no store at"),
    ]:
        result = vault(*args)
        assert result.returncode == 1, args
        assert says in result.stderr.decode() and "Traceback" not in result.stderr.decode()


def in_a_mount_namespace() -> list[str]:
    """The command that runs a script where it may mount a small tmpfs of its own (seen by no one
    else, gone when it ends): as root, a new mount namespace; otherwise a user namespace too."""
    if os.geteuid() == 0:
        return ["unshare", "--mount", "--propagation", "private"]
    return ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]


def test_a_full_disk_and_a_read_only_disk_say_what_to_do_and_the_retry_stores_each_line_once(tmp_path):
    source = tmp_path / "events.jsonl"
    source.write_text(lines_of(ROWS))  # about 400 kB of messages
    disk = tmp_path / "disk"
    disk.mkdir()
    script = textwrap.dedent(
        f"""
        mount -t tmpfs -o size=1m tmpfs {disk}
        free() {{ df --output=avail -B1 {disk} | tail -1; }}
        fill() {{ head -c "$1" /dev/zero > "$2" 2>/dev/null || true; }}
        run() {{ "$@"; echo "exit $?"; }}
        fill $(( $(free) - 100000 )) {disk}/filler
        echo "--- full before the first append"
        fill $(free) {disk}/more
        run {VAULT} publish empty {source} --store {disk}/store
        {VAULT} streams --store {disk}/store --json; echo "streams $?"
        rm {disk}/more
        echo "--- full midway"
        run {VAULT} publish events {source} --batch-size 100 --store {disk}/store
        rm {disk}/filler
        echo "--- space freed"
        run {VAULT} publish events {source} --batch-size 100 --store {disk}/store
        {VAULT} read events --store {disk}/store --json | wc -l
        echo "--- read only"
        mount -o remount,ro {disk}
        run {VAULT} publish other {source} --store {disk}/store
        """
    )
    done = subprocess.run(
        [*in_a_mount_namespace(), "bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "VAULT_STORE": ""},
    )
    steps = dict(re.findall(r"--- (.+?)\n(.*?)(?=\n--- |\Z)", done.stdout + "\n", flags=re.S))
    errors = done.stderr
    assert "Traceback" not in errors, errors
    assert steps["full before the first append"].splitlines()[0] == "exit 1"
    assert "no space left on the device of" in errors and "free some space, then retry" in errors
    assert "streams 0" in steps["full before the first append"]  # the refused stream left nothing
    assert '"stream": "empty"' not in steps["full before the first append"]
    assert steps["full midway"].strip() == "exit 1"
    assert "run the same command again to append the rest, each line once" in errors
    freed = steps["space freed"].splitlines()
    assert "exit 0" in freed and "were there already" in freed[0]
    assert int(freed[-1]) == len(ROWS)  # every line once
    assert steps["read only"].strip() == "exit 1"
    assert "cannot" in errors and "Read-only file system" in errors
    assert Path(disk).exists()


def test_ctrl_c_twice_stops_at_once_and_the_rerun_still_stores_each_line_once(tmp_path):
    """The server stalls mid-append (SIGSTOP): Ctrl-C asks to stop after that batch, a second one
    stops at once; the batch in flight completes on the server later, and the rerun finds it."""
    source = tmp_path / "events.jsonl"
    source.write_text(lines_of(ROWS))
    root = tmp_path / "vault"
    store = vault_core.open_store(root)
    served = Served(str(root), "vault")
    args = ["publish", "events", str(source), "--batch-size", "5", "--url", served.url]
    try:
        process = subprocess.Popen(
            [VAULT, *args], stderr=subprocess.PIPE, env={**os.environ, "VAULT_STORE": ""}
        )
        deadline = time.monotonic() + 60
        while not ("events" in store.streams() and store.reader("events").position()):
            assert time.monotonic() < deadline
            time.sleep(0.005)
        served.process.send_signal(signal.SIGSTOP)  # the publish's next append hangs
        time.sleep(0.3)
        process.send_signal(signal.SIGINT)
        time.sleep(0.3)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
        served.process.send_signal(signal.SIGCONT)
        assert process.returncode == 130
        said = err.decode()
        assert "stopping after the batch in flight" in said
        assert re.search(r"stopped: lines 1 to [\d,]+ of .* are in events, and the 5 after them may be", said)
        assert vault(*args).returncode == 0
    finally:
        served.stop()
    assert stored(store, "events") == ROWS


@pytest.mark.parametrize("via", ["store", "url", "azurite"])
def test_a_file_that_grew_publishes_only_its_new_lines_whatever_the_batch_size(tmp_path, via, request):
    """2,500 lines published, 2,500 more appended to the file, published again with another batch
    size: the stream holds each of the 5,000 once."""
    azurite = request.getfixturevalue("azurite") if via == "azurite" else None
    with publishing(tmp_path, via, azurite) as (args, store, _):
        source = Path(args[2])
        source.write_text(lines_of(ROWS[:2500]))
        assert vault(*args).returncode == 0
        source.write_text(lines_of(ROWS[:5000]))
        grown = vault(*[a if a != "5" else "333" for a in args], "--json")
        assert grown.returncode == 0, grown.stderr.decode()
        said = json_lines(grown)[0]
        assert (said["messages"], said["skipped"], said["new_stream"]) == (2500, 2500, False)
        assert stored(store, "events") == ROWS[:5000]
        # The default batch size now, and the file unchanged: nothing is appended.
        again = vault(*args[:3], *args[5:])
        assert again.returncode == 0 and "nothing to publish: all 5,000 messages" in again.stdout.decode()
        assert len(stored(store, "events")) == 5000


@pytest.mark.parametrize("via", ["store", "url", "azurite"])
def test_an_input_whose_published_part_changed_is_refused_and_again_publishes_it_anew(tmp_path, via, request):
    azurite = request.getfixturevalue("azurite") if via == "azurite" else None
    with publishing(tmp_path, via, azurite) as (args, store, _):
        source = Path(args[2])
        rows = ROWS[:1000]
        source.write_text(lines_of(rows))
        assert vault(*args).returncode == 0
        changed = [*rows[:700], ("edited", b"by hand"), *rows[701:], ("new", b"line")]
        source.write_text(lines_of(changed))
        refused = vault(*args)
        said = refused.stderr.decode()
        assert refused.returncode == 1, said
        assert "has changed since it was published to events: message 701 is" in said
        assert '{"key": "edited", "value": "by hand"}' in said and '"value": "event 700 "' in said
        assert "use --again" in said
        assert stored(store, "events") == rows  # nothing appended
        assert vault(*args, "--again").returncode == 0
        assert stored(store, "events") == rows + changed


def test_the_beginning_of_a_published_input_is_in_already(local_store, tmp_path):
    source = tmp_path / "events.jsonl"
    source.write_text(lines_of(ROWS[:1000]))
    where = ["--store", str(local_store.backend.root)]
    assert vault("publish", "events", str(source), "--batch-size", "7", *where).returncode == 0
    source.write_text(lines_of(ROWS[:500]))  # not a batch boundary of the run before
    shorter = vault("publish", "events", str(source), "--batch-size", "64", *where)
    assert shorter.returncode == 0 and "nothing to publish: all 500 messages" in shorter.stdout.decode()
    assert stored(local_store, "events") == ROWS[:1000]


def test_publish_says_when_it_creates_a_stream_and_names_a_missing_file(local_store, tmp_path):
    where = ["--store", str(local_store.backend.root)]
    first = vault("publish", "orders", "-", *where, input=lines_of(ROWS[:3]))
    assert first.returncode == 0 and "to orders (new stream):" in first.stdout.decode()
    second = vault("publish", "orders", "-", *where, input=lines_of(ROWS[3:6]))
    assert second.returncode == 0 and "(new stream)" not in second.stdout.decode()
    missing = vault("publish", "orders", str(tmp_path / "no-such.jsonl"), *where)
    assert missing.returncode == 2  # a usage mistake
    assert "no-such.jsonl" in missing.stderr.decode() and "does not exist" in missing.stderr.decode()


@pytest.mark.parametrize("via", ["store", "url"])
def test_publish_is_a_library_call_that_resumes_by_content(tmp_path, via):
    root = tmp_path / "vault"
    served = Served(str(root), "vault") if via == "url" else None
    store = vault_core.open_store(root)
    where = {"url": served.url} if served else {"store": store}
    messages = [vault_core.Message(key, value) for key, value in ROWS[:300]]
    try:
        first = vault_core.publish("lib", messages[:200], batch_size=30, **where)
        assert (first.published, first.skipped, first.created, first.complete) == (200, 0, True, True)
        seen: list[vault_core.PublishProgress] = []
        grown = vault_core.publish("lib", messages, batch_size=50, progress=seen.append, **where)
        assert (grown.published, grown.skipped, grown.created) == (100, 200, False)
        assert seen[0].held == 200 and seen[-1].held == 300 and seen[-1].total == 300
        assert grown.position == store.reader("lib").position()
        with pytest.raises(vault_core.PublishRefused) as refused:
            vault_core.publish("lib", [messages[0], vault_core.Message("x", b"y"), *messages[2:]], **where)
        assert refused.value.line == 2
        stopped = vault_core.publish(
            "lib", messages + messages, again=True, batch_size=10, should_stop=lambda: True, **where
        )
        assert not stopped.complete and stopped.published == 0
    finally:
        if served:
            served.stop()
    assert stored(store, "lib") == ROWS[:300]


@pytest.mark.parametrize("via", ["store", "url"])
def test_a_publish_killed_mid_run_and_resumed_with_another_batch_size_stores_each_line_once(tmp_path, via):
    with publishing(tmp_path, via) as (args, store, _):
        process = subprocess.Popen(
            [VAULT, *args], stderr=subprocess.DEVNULL, env={**os.environ, "VAULT_STORE": ""}
        )
        deadline = time.monotonic() + 60
        while not ("events" in store.streams() and store.reader("events").position() > 20_000):
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)  # no progress record written on the way out
        process.wait(30)
        held = len(stored(store, "events"))
        assert 0 < held < len(ROWS)
        resumed = json_lines(vault(*[a if a != "5" else "64" for a in args], "--json"))[0]
        # What was in is skipped (and the batch in flight, which the server may have committed since).
        assert held <= resumed["skipped"] <= held + 5 and resumed["skipped"] + resumed["messages"] == len(
            ROWS
        )
    assert stored(store, "events") == ROWS
