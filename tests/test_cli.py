"""The `vault` command, run as a subprocess the way a user runs it, on the embedded store and on
Azurite: output, exit codes, and what each command leaves in storage."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import vault_core
from tests.support import ROOT
from tests.support.damage import flip_byte, log_blob
from vault_core import format as fmt
from vault_core.stores.local import LocalStore

VAULT = str(Path(sys.executable).parent / "vault")


def vault(*args: str, input: str | bytes | None = None, env: dict[str, str] | None = None):
    """Run `vault ARGS`; bounded, never waits on a terminal."""
    data = input.encode() if isinstance(input, str) else input
    return subprocess.run(
        [VAULT, *args],
        input=data if data is not None else b"",
        capture_output=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "VAULT_STORE": "", **(env or {})},
    )


def out(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def json_lines(result: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in out(result).splitlines()]


def store_args(store: vault_core.Store, connection_string: str = "") -> list[str]:
    """The command-line options that address `store` (on Azurite, through `connection_string`)."""
    if isinstance(store.backend, LocalStore):
        return ["--store", str(store.backend.root)]
    return ["--store", connection_string, "--container", store.backend.container]


@pytest.fixture
def where(store: vault_core.Store, request: pytest.FixtureRequest) -> list[str]:
    if isinstance(store.backend, LocalStore):
        return store_args(store)
    return store_args(store, request.getfixturevalue("azurite").connection_string)


def lines_of(messages: list[tuple[str, bytes]]) -> str:
    rows = []
    for key, value in messages:
        try:
            rows.append({"key": key, "value": value.decode()})
        except UnicodeDecodeError:
            rows.append({"key": key, "value_b64": base64.b64encode(value).decode()})
    return "".join(json.dumps(row) + "\n" for row in rows)


MESSAGES = [(f"key-{i % 3}", f"event {i}".encode()) for i in range(2500)] + [("raw", b"\xff\x00\xfe")]


def test_publish_from_a_file_then_read_it_back(store, where, tmp_path):
    source = tmp_path / "events.jsonl"
    source.write_text(lines_of(MESSAGES))
    result = json_lines(vault("publish", "orders", str(source), "--batch-size", "1000", "--json", *where))
    assert len(result) == 1
    summary = result[0]
    assert summary["messages"] == len(MESSAGES) and summary["batches"] == 3
    stored = list(store.reader("orders").replay())
    assert [(m.key, m.value) for m in stored] == MESSAGES
    assert summary["first_offset"] == stored[0].offset and summary["last_offset"] == stored[-1].offset
    assert summary["position"] == store.reader("orders").position()

    read = json_lines(vault("read", "orders", "--json", *where))
    assert [r["offset"] for r in read] == [m.offset for m in stored]
    assert read[0] == {
        "offset": stored[0].offset,
        "timestamp": stored[0].timestamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "key": "key-0",
        "value": "event 0",
    }
    assert read[-1]["value_b64"] == base64.b64encode(b"\xff\x00\xfe").decode() and "value" not in read[-1]

    plain = out(vault("read", "orders", "--from", str(stored[5].offset), "--limit", "2", *where))
    assert plain.splitlines() == [
        f"{m.offset}\t{m.timestamp.isoformat(timespec='milliseconds').replace('+00:00', 'Z')}\t{m.key}\t"
        f"{m.value.decode()}"
        for m in stored[5:7]
    ]
    last = out(vault("read", "orders", "--from", str(stored[-1].offset), *where))
    assert last.endswith("\traw\tbase64:/wD+\n")


def test_publish_from_stdin_appends_each_batch_once_and_says_what_it_committed(store, where):
    text = out(vault("publish", "audit", "-", *where, input=lines_of(MESSAGES[:10])))
    position = store.reader("audit").position()
    stored = list(store.reader("audit").replay())
    assert text.strip() == (
        f"published 10 messages in 1 batch to audit (new stream): offsets {stored[0].offset} to "
        f"{stored[-1].offset}, stream position now {position}"
    )
    assert len(fmt.ring_entries(store.reader("audit").commit_record().ring)) == 1  # appended with a batch id


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ("not json", "line 3: not JSON"),
        ('{"key": 7, "value": "x"}', "line 3: key must be a string, got int"),
        ('{"key": "k"}', "line 3: give exactly one of value (text) and value_b64 (base64)"),
        ('{"key": "k", "value_b64": "***"}', "line 3: value_b64 is not valid base64"),
        ('{"key": "k", "value": "x", "partition": 2}', "line 3: unknown field(s) ['partition']"),
        (
            json.dumps({"key": "k" * 256, "value": "x"}),
            "line 3: key is 256 bytes in UTF-8, above the 255-byte limit",
        ),
        ('["k", "v"]', 'line 3: expected an object like {"key": "...", "value": "..."}'),
    ],
)
def test_a_bad_input_line_is_named_and_nothing_is_published(local_store, line, complaint):
    where = store_args(local_store)
    good = lines_of(MESSAGES[:2])
    result = vault("publish", "orders", "-", *where, input=good + line + "\n" + lines_of(MESSAGES[:5]))
    assert result.returncode == 1
    assert f"Error: stdin, {complaint}" in result.stderr.decode()
    assert "nothing was published" in result.stderr.decode()
    assert local_store.streams() == []


def test_publish_through_the_http_api(azurite, azurite_store):
    from tests.support.served import Served

    served = Served(azurite.connection_string, azurite_store.backend.container)
    try:
        summary = json_lines(
            vault("publish", "orders", "--url", served.url, "--json", input=lines_of(MESSAGES[:1200]))
        )[0]
    finally:
        served.stop()
    assert summary["batches"] == 2 and summary["messages"] == 1200
    stored = list(azurite_store.reader("orders").replay())
    assert [(m.key, m.value) for m in stored] == MESSAGES[:1200]
    assert summary["position"] == azurite_store.reader("orders").position()


def test_streams_lists_position_size_and_last_append(store, where):
    missing = vault("streams", "--json", *where)  # the store does not exist yet
    assert missing.returncode == 1 and "no store at" in missing.stderr.decode()
    with store.writer("orders") as writer:
        writer.append([vault_core.Message("k", b"v" * 1000)])
    with store.writer("audit") as writer:
        last = writer.append([vault_core.Message("k", b"v")])
    listed = json_lines(vault("streams", "--json", *where))
    assert [s["stream"] for s in listed] == ["audit", "orders"]
    audit = listed[0]
    assert audit["position"] == last.position
    assert audit["size"] >= fmt.data_at(last.position)
    appended = next(iter(store.reader("audit").replay())).timestamp
    assert audit["last_append"] == appended.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    table = out(vault("streams", *where))
    assert table.splitlines()[0].split() == ["stream", "position", "size", "last", "append"]
    assert table.splitlines()[1].split()[:2] == ["audit", f"{last.position:,}"]


def test_read_from_time_starts_at_the_first_message_at_or_after_it(store, where):
    with store.writer("orders") as writer:
        for round in range(3):
            writer.append([vault_core.Message("k", f"{round}-{i}".encode()) for i in range(3)])
            time.sleep(0.05)
    stored = list(store.reader("orders").replay())
    second = stored[3].timestamp
    read = json_lines(vault("read", "orders", "--from-time", second.isoformat(), "--json", *where))
    assert [r["value"] for r in read] == ["1-0", "1-1", "1-2", "2-0", "2-1", "2-2"]
    # A naive time means UTC; an offset is honoured.
    naive = second.replace(tzinfo=None).isoformat()
    assert len(json_lines(vault("read", "orders", "--from-time", naive, "--json", *where))) == 6
    later = json_lines(vault("read", "orders", "--from-time", "2999-01-01T00:00:00+01:00", "--json", *where))
    assert later == []
    bad = vault("read", "orders", "--from-time", "yesterday", *where)
    assert bad.returncode == 2 and "'yesterday' is not an ISO 8601 time" in bad.stderr.decode()


def test_read_reports_what_is_wrong(local_store, tmp_path):
    where = store_args(local_store)
    with local_store.writer("orders") as writer:
        writer.append([vault_core.Message("k", b"value")])
    unknown = vault("read", "nope", *where)
    assert unknown.returncode == 1
    assert "stream 'nope' does not exist" in unknown.stderr.decode()
    middle = vault("read", "orders", "--from", "7", *where)
    assert middle.returncode == 1 and "position 7 is not a record boundary" in middle.stderr.decode()
    nowhere = vault("read", "orders")
    assert nowhere.returncode == 2 and "--store" in nowhere.stderr.decode()
    both = vault("read", "orders", "--from", "0", "--from-time", "2026-01-01", *where)
    assert both.returncode == 2 and "not both" in both.stderr.decode()


def test_read_by_read_url(azurite_store):
    with azurite_store.writer("orders") as writer:
        writer.append([vault_core.Message("k", b"one"), vault_core.Message("k", b"two")])
    url = azurite_store.read_url("orders")
    assert [r["value"] for r in json_lines(vault("read", "orders", "--url", url, "--json"))] == ["one", "two"]
    wrong = vault("read", "audit", "--url", url)
    assert wrong.returncode == 2 and "read URL of stream 'orders', not of 'audit'" in wrong.stderr.decode()


def _wait_for_lines(process: subprocess.Popen, count: int) -> list[str]:
    lines = []
    deadline = time.monotonic() + 30
    while len(lines) < count and time.monotonic() < deadline:
        line = process.stdout.readline()
        if line:
            lines.append(line.decode().rstrip("\n"))
    return lines


@pytest.mark.parametrize("command", [["read", "--follow"], ["tail"]])
def test_following_prints_new_messages_until_ctrl_c(store, where, command):
    with store.writer("orders") as writer:
        writer.append([vault_core.Message("k", b"before")])
        process = subprocess.Popen(
            [VAULT, command[0], "orders", *command[1:], "--poll", "0.1", "--json", *where],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
        try:
            if command == ["read", "--follow"]:
                assert [json.loads(x)["value"] for x in _wait_for_lines(process, 1)] == ["before"]
            else:  # tail starts from the end: let it get there first
                assert process.stderr.readline().decode().startswith("following orders from position")
            writer.append([vault_core.Message("k", b"after-1"), vault_core.Message("k", b"after-2")])
            assert [json.loads(x)["value"] for x in _wait_for_lines(process, 2)] == ["after-1", "after-2"]
        finally:
            process.send_signal(signal.SIGINT)
            code = process.wait(20)
    assert code == 0, process.stderr.read().decode()


def test_verify_passes_a_sound_stream_and_finds_a_flipped_byte(store, where):
    with store.writer("orders") as writer:
        results = [
            writer.append([vault_core.Message("k", os.urandom(300)) for _ in range(50)], batch_id=f"b{i}")
            for i in range(40)
        ]
    sound = json_lines(vault("verify", "orders", "--json", *where))
    assert sound == [
        {"stream": "orders", "ok": True, "position": results[-1].position, "batches": 40, "messages": 2000}
    ]
    flip_byte(store, "orders", fmt.data_at(results[25].offsets[10] + 20))
    report = vault("verify", "orders", *where)
    assert report.returncode == 1
    assert f"damaged at position {results[24].position}" in report.stderr.decode()
    assert f"Everything before position {results[24].position} is intact" in report.stderr.decode()
    as_json = vault("verify", "orders", "--json", *where)
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["damage_at"] == results[24].position


def _blob_bytes(store: vault_core.Store, stream: str, length: int) -> bytes:
    return log_blob(store, stream).download_blob(offset=0, length=length).readall()


def _copy_position(path: Path) -> int:
    try:
        header = path.read_bytes()[: 2 * fmt.SLOT_SIZE]
    except FileNotFoundError:
        return 0
    return fmt.decode_commit_record("orders", header).position


def test_mirror_copies_byte_for_byte_resumes_after_a_kill_and_then_copies_only_whats_new(
    azurite, azurite_store, tmp_path
):
    where = store_args(azurite_store, azurite.connection_string)
    with azurite_store.writer("orders") as writer:
        for i in range(64):
            writer.append([vault_core.Message("k", os.urandom(1024 * 1024 - 64))], batch_id=f"big-{i}")
    end = azurite_store.reader("orders").position()
    copy = tmp_path / "copy"
    log = copy / "orders" / "log"

    process = subprocess.Popen([VAULT, "mirror", "orders", "--to", str(copy), *where], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while _copy_position(log) == 0 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.005)
    finally:
        process.kill()  # as hard as it gets: no clean-up runs
        process.wait()
    interrupted_at = _copy_position(log)
    assert 0 < interrupted_at < end

    resumed = json_lines(vault("mirror", "orders", "--to", str(copy), "--json", *where))[0]
    assert resumed["start"] == interrupted_at and resumed["position"] == end
    assert resumed["copied"] == end - interrupted_at
    mirrored = log.read_bytes()
    assert len(mirrored) == fmt.data_at(end) + (-fmt.data_at(end) % 512)
    assert mirrored == _blob_bytes(azurite_store, "orders", len(mirrored))

    again = out(vault("mirror", "orders", "--to", str(copy), *where))
    assert "(it was up to date)" in again
    with azurite_store.writer("orders") as writer:
        writer.append([vault_core.Message("k", b"one more")])
    more = json_lines(vault("mirror", "orders", "--to", str(copy), "--json", *where))[0]
    assert more["start"] == end and more["copied"] == azurite_store.reader("orders").position() - end
    mirrored = log.read_bytes()
    assert mirrored == _blob_bytes(azurite_store, "orders", len(mirrored))
    # The copy reads like the stream, at disk speed.
    assert (
        json_lines(vault("read", "orders", "--store", str(copy), "--from", str(end), "--json"))[0]["value"]
        == "one more"
    )
    assert json_lines(vault("verify", "orders", "--store", str(copy), "--json"))[0]["ok"]


def test_mirror_refuses_a_copy_of_another_stream(local_store, tmp_path):
    where = store_args(local_store)
    other = vault_core.open_store(tmp_path / "copy")
    with local_store.writer("orders") as writer, other.writer("orders") as stranger:
        writer.append([vault_core.Message("k", b"ours" * 100)])
        stranger.append([vault_core.Message("k", b"theirs")])
    refused = vault("mirror", "orders", "--to", str(tmp_path / "copy"), *where)
    assert refused.returncode == 1
    assert "it is not a copy of this stream" in refused.stderr.decode()
    assert [m.value for m in other.reader("orders").replay()] == [b"theirs"]


def test_read_as_a_consumer_group_resumes_where_the_group_stopped(store, where):
    with store.writer("orders") as writer:
        for round in range(3):
            writer.append([vault_core.Message("k", f"{round}-{i}".encode()) for i in range(4)])

    def values(*extra: str) -> list[str]:
        return [
            r["value"]
            for r in json_lines(vault("read", "orders", "--group", "billing", "--json", *where, *extra))
        ]

    # A limit that ends inside a batch leaves the checkpoint right there.
    assert values("--limit", "6") == ["0-0", "0-1", "0-2", "0-3", "1-0", "1-1"]
    assert values("--limit", "2") == ["1-2", "1-3"]
    assert values() == ["2-0", "2-1", "2-2", "2-3"]
    assert values() == []
    with store.writer("orders") as writer:
        writer.append([vault_core.Message("k", b"3-0")])
    assert values() == ["3-0"]
    # Another group starts where it is told to, and is independent.
    audit = json_lines(vault("read", "orders", "--group", "audit", "--limit", "1", "--json", *where))
    assert [r["value"] for r in audit] == ["0-0"]
    with store.checkpoints("billing") as checkpoints:
        assert checkpoints.get("orders").position == store.reader("orders").position()
    bad = vault("read", "orders", "--group", "no spaces", *where)
    assert bad.returncode == 1 and "invalid consumer group name 'no spaces'" in bad.stderr.decode()


@pytest.mark.parametrize(
    "command", ["streams", "publish", "read", "tail", "groups", "verify", "mirror", "serve", "demo"]
)
def test_every_command_explains_itself(command):
    result = vault(command, "--help")
    assert result.returncode == 0 and not result.stderr
    assert result.stdout.decode().startswith(f"Usage: vault {command} [OPTIONS]")


def test_serve_says_where_the_store_is_without_its_key(azurite):
    from tests.support.azurite import KEY, free_port

    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vault_core.cli",
            "serve",
            "--store",
            azurite.connection_string,
            "--container",
            "said",
            "--port",
            str(free_port()),
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        said = server.stderr.readline()
    finally:
        server.terminate()
        server.wait(10)
    assert f"{azurite.blob_endpoint}/said" in said
    assert KEY not in said and "AccountKey" not in said


def test_groups_lists_each_groups_lag(store, where):
    with store.writer("orders") as writer:
        first = writer.append([vault_core.Message("a", b"1")])
        writer.append([vault_core.Message("b", b"2")])
    assert vault("read", "orders", "--group", "billing", "--limit", "1", *where).returncode == 0
    assert vault("read", "orders", "--group", "search", "--exclusive", *where).returncode == 0
    listed = json_lines(vault("groups", "--json", *where))
    position = store.reader("orders").position()
    assert [(g["group"], g["stream"], g["checkpoint"], g["position"], g["lag_bytes"]) for g in listed] == [
        ("billing", "orders", first.position, position, position - first.position),
        ("search", "orders", position, position, 0),
    ]
    assert listed[0]["behind_seconds"] > 0 and listed[1]["behind_seconds"] == 0
    table = out(vault("groups", "billing", *where)).splitlines()
    assert table[0].split() == ["group", "stream", "checkpoint", "position", "lag", "behind"]
    assert table[1].split()[:4] == ["billing", "orders", f"{first.position:,}", f"{position:,}"]
    unknown = vault("groups", "nobody", *where)
    assert unknown.returncode == 1 and "consumer group 'nobody' has no checkpoint" in unknown.stderr.decode()


def no_azure_login(tmp_path: Path) -> dict[str, str]:
    """An environment with no Azure login anywhere: no AZURE_* settings, an empty home."""
    return {**{k: "" for k in os.environ if k.startswith("AZURE_")}, "HOME": str(tmp_path)}


def test_errors_say_what_went_wrong_and_what_to_do(local_store, tmp_path):
    """Each as a user meets it: one line on stderr, exit 1, no traceback."""
    from tests.support.served import Served

    where = store_args(local_store)
    source = tmp_path / "one.jsonl"
    source.write_text(lines_of(MESSAGES[:3]))
    with local_store.writer("orders") as writer:
        writer.append([vault_core.Message("k", b"v")])
        busy = vault("publish", "orders", str(source), *where)
    served = Served(str(tmp_path / "served"), "vault", "--api-key", "s3cret")
    try:
        keyless = vault("publish", "orders", str(source), "--url", served.url)
    finally:
        served.stop()
    surrogate = tmp_path / "surrogate.jsonl"
    surrogate.write_text('{"key": "k", "value": "ok"}\n{"key": "k", "value": "\\ud800"}\n')
    cases = [
        (
            busy,
            "has another live writer",
            "stop that writer, or publish through the server that holds the stream (--url)",
        ),
        (keyless, "401", "pass the API key with --key, or set VAULT_API_KEY"),
        (vault("read", "orders", "--from", "3", *where), "not a record boundary", "--from-time"),
        (
            vault(
                "read",
                "s",
                "--url",
                "https://account.blob.core.windows.net/vault/s/log",
                env=no_azure_login(tmp_path),
            ),
            "no Azure login to sign in with",
            "run `az login`",
        ),
        (
            vault(
                "streams", "--store", "https://account.blob.core.windows.net", env=no_azure_login(tmp_path)
            ),
            "no Azure login to sign in with",
            "or give a connection string",
        ),
        (
            vault("publish", "s", str(surrogate), *where),
            "line 2: the value holds a lone UTF-16 surrogate",
            "value_b64",
        ),
    ]
    for result, what, to_do in cases:
        said = result.stderr.decode()
        assert result.returncode == 1, said
        assert what in said and to_do in said, said
        assert "Traceback" not in said and len(said.strip().splitlines()) == 1, said
    assert "Nothing was published" in busy.stderr.decode()


COPIED = [
    ("order-created", b'{"order": 7}'),
    ("raw", b"\xff\x00\xfe"),  # not UTF-8: read prints it as value_b64
    ("", b""),
    ("text that looks like base64", b"AA=="),
    ("é", "crème\n\u2603\t".encode()),
    ("bytes", bytes(range(256))),
]


def test_read_json_piped_into_publish_copies_a_stream_exactly_binary_values_included(store, where):
    with store.writer("source") as writer:
        writer.append([vault_core.Message(k, v) for k, v in COPIED])
    env = {**os.environ, "VAULT_STORE": ""}
    read = subprocess.Popen(
        [VAULT, "read", "source", "--json", *where], stdout=subprocess.PIPE, cwd=ROOT, env=env
    )
    assert read.stdout is not None
    try:
        publish = subprocess.run(
            [VAULT, "publish", "copy", "-", *where],
            stdin=read.stdout,
            capture_output=True,
            timeout=120,
            cwd=ROOT,
            env=env,
        )
    finally:
        read.stdout.close()
        read_code = read.wait(timeout=60)
    assert read_code == 0 and publish.returncode == 0, publish.stderr.decode()
    assert [(m.key, m.value) for m in store.reader("copy").replay()] == COPIED
    printed = json_lines(vault("read", "copy", "--json", *where))
    assert [m.get("value_b64") is not None for m in printed] == [False, True, False, False, False, True]
