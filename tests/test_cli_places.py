"""Where a command reads and writes, as a newcomer gives it: --url is the vault's HTTP address for
every command (and a stream's read URL where one reads), an explicit option beats the
environment, options that contradict are refused, and mistakes are named rather than guessed at."""

from __future__ import annotations

import os
import re
import subprocess
import time

import httpx
import pytest

import vault_core
from tests.support.served import Served
from tests.test_cli import VAULT, json_lines, lines_of, out, vault, where  # noqa: F401 - a fixture

ROWS = [(f"k{i % 3}", f"event {i}".encode()) for i in range(40)] + [("raw", b"\xff\x00\xfe")]


@pytest.fixture
def served(store, where):  # noqa: F811 - the fixture imported above
    """`vault serve` on `store`, with an API key."""
    target, container = where[1], where[3] if len(where) > 3 else None
    server = Served(target, container, "--api-key", "the-key")
    yield server
    server.stop()


def test_every_command_takes_the_vaults_http_address(store, where, served, tmp_path):  # noqa: F811
    url = ["--url", served.url, "--key", "the-key"]
    published = vault("publish", "orders", "-", *url, "--json", input=lines_of(ROWS))
    assert json_lines(published)[0]["new_stream"] is True
    for command in (["read", "orders"], ["verify", "orders"], ["streams"]):
        through_api = vault(*command, *url, "--json")
        direct = vault(*command, *where, "--json")
        assert out(through_api) == out(direct) or command == ["streams"], command
    [listed] = json_lines(vault("streams", *url, "--json"))
    assert (listed["stream"], listed["position"]) == ("orders", store.reader("orders").position())
    assert [m["value"] for m in json_lines(vault("read", "orders", *url, "--json"))[:2]] == [
        "event 0",
        "event 1",
    ]
    assert out(vault("read", "orders", *where, "--group", "g", "--limit", "5"))
    [lag] = json_lines(vault("groups", *url, "--json"))
    assert (lag["group"], lag["stream"]) == ("g", "orders") and lag["lag_bytes"] > 0
    mirrored = vault("mirror", "orders", "--to", str(tmp_path / "copy"), *url, "--json")
    assert json_lines(mirrored)[0]["position"] == store.reader("orders").position()
    # A read URL still reads, and only reads.
    read_url = store.read_url("orders")
    assert len(json_lines(vault("read", "orders", "--url", read_url, "--json"))) == len(ROWS)
    refused = vault("publish", "orders", "-", "--url", read_url, input=lines_of(ROWS[:1]))
    assert refused.returncode == 2 and "read URL, which only reads" in refused.stderr.decode()


def test_a_wrong_api_key_is_said_to_be_not_accepted_and_a_missing_one_to_be_required(served):
    wrong = vault("streams", "--url", served.url, "--key", "not-the-key")
    missing = vault("streams", "--url", served.url)
    assert wrong.returncode == missing.returncode == 1
    assert "The key was not accepted" in wrong.stderr.decode()
    assert "check the key given with --key" in wrong.stderr.decode()
    assert "A key is required" in missing.stderr.decode() and "pass the API key" in missing.stderr.decode()
    assert "not-the-key" not in wrong.stderr.decode()


def test_an_explicit_option_beats_the_environment_and_two_explicit_places_are_refused(local_store, tmp_path):
    served = Served(str(local_store.backend.root), None)
    try:
        env = {"VAULT_STORE": str(tmp_path / "elsewhere")}
        published = vault("publish", "s", "-", "--url", served.url, input=lines_of(ROWS), env=env)
        assert published.returncode == 0, published.stderr.decode()
        assert len(list(local_store.reader("s").replay())) == len(ROWS)
        assert not (tmp_path / "elsewhere").exists()
        both = vault("read", "s", "--store", str(local_store.backend.root), "--url", served.url)
        assert both.returncode == 2 and "--store and --url name two places" in both.stderr.decode()
    finally:
        served.stop()


def test_from_with_a_group_that_has_a_checkpoint_is_refused(local_store):
    here = ["--store", str(local_store.backend.root)]
    out(vault("publish", "s", "-", *here, input=lines_of(ROWS)))
    offset = list(local_store.reader("s").replay())[10].offset
    first = json_lines(
        vault("read", "s", *here, "--group", "g", "--from", str(offset), "--limit", "2", "--json")
    )
    assert [m["value"] for m in first] == ["event 10", "event 11"]  # a new group starts there
    again = vault("read", "s", *here, "--group", "g", "--from", "0")
    assert again.returncode == 2
    assert "consumer group 'g' reads s on from its checkpoint" in again.stderr.decode()
    assert "leave out --from" in again.stderr.decode()
    # A position pasted as printed with thousands separators is taken.
    pasted = vault("read", "s", *here, "--from", f"{offset:,}", "--limit", "1", "--json")
    assert json_lines(pasted)[0]["offset"] == offset


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("htps://account.blob.core.windows.net", "is not a kind of store"),
        ("memory:", "keeps streams in the memory of the process that opens it"),
    ],
)
def test_a_store_target_with_an_unknown_scheme_or_one_that_outlives_no_command_is_refused(
    target, says, tmp_path
):
    result = subprocess.run(
        [VAULT, "publish", "s", "-", "--store", target],
        input=b'{"value": "x"}\n',
        capture_output=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert says in result.stderr.decode() and "a directory" in result.stderr.decode()
    assert not any(tmp_path.iterdir())  # no directory of that name


def test_a_storage_account_that_cannot_be_reached_is_one_quick_line(azurite):
    dead = azurite.connection_string.replace(f":{azurite.port}/", ":9/")
    started = time.monotonic()
    result = vault("streams", "--store", dead)
    assert result.returncode == 1 and time.monotonic() - started < 10
    assert "cannot reach the storage account at 127.0.0.1:9" in result.stderr.decode()
    assert "is Azurite running at 127.0.0.1:9?" in result.stderr.decode()
    assert "AccountKey" not in result.stderr.decode()


def test_delete_asks_for_the_name_and_takes_the_groups_checkpoints_with_it(store, where):  # noqa: F811
    out(vault("publish", "s", "-", *where, input=lines_of(ROWS)))
    out(vault("read", "s", *where, "--group", "g"))
    unconfirmed = vault("delete", "s", *where)
    assert unconfirmed.returncode == 2 and "--confirm s" in unconfirmed.stderr.decode()
    mistyped = vault("delete", "s", *where, "--confirm", "t")
    assert mistyped.returncode == 1 and "nothing was changed" in mistyped.stderr.decode()
    assert "s" in store.streams()
    with store.writer("s"):
        busy = vault("delete", "s", *where, "--confirm", "s")
    assert busy.returncode == 1 and "s" in store.streams()
    deleted = vault("delete", "s", *where, "--confirm", "s")
    assert deleted.returncode == 0 and "deleted stream s" in deleted.stdout.decode()
    assert "s" not in store.streams()
    # Made again, the stream is read from its start by the group, which lost its old checkpoint.
    out(vault("publish", "s", "-", *where, input=lines_of(ROWS[:3])))
    assert [m["value"] for m in json_lines(vault("read", "s", *where, "--group", "g", "--json"))] == [
        "event 0",
        "event 1",
        "event 2",
    ]


def test_tail_waits_for_a_stream_that_does_not_exist_yet(local_store):
    local_store.writer("other").close()  # the store exists; stream s does not
    here = ["--store", str(local_store.backend.root)]
    process = subprocess.Popen(
        [VAULT, "tail", "s", *here, "--poll", "0.1", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "VAULT_STORE": ""},
    )
    try:
        assert "does not exist yet: waiting for it" in process.stderr.readline().decode()
        time.sleep(0.3)
        with local_store.writer("s") as writer:
            writer.append([vault_core.Message("k", b"first")])
        assert b'"value": "first"' in process.stdout.readline()
    finally:
        process.terminate()
        process.wait(20)


def test_serve_on_the_network_without_a_key_is_refused_unless_asked_for(tmp_path):
    refused = vault("serve", "--store", str(tmp_path / "v"), "--host", "0.0.0.0", "--port", "1")
    assert refused.returncode == 2
    assert "would let anyone who can reach this machine publish" in refused.stderr.decode()
    assert "--without-key" in refused.stderr.decode()


def test_serve_logs_each_request_in_one_line_without_its_query_string(tmp_path):
    server = Served(str(tmp_path / "v"), None, "--api-key", "sekrit-key", log=tmp_path / "serve.log")
    try:
        out(vault("publish", "s", "-", "--url", server.url, "--key", "sekrit-key", input=lines_of(ROWS[:2])))
        httpx.get(f"{server.url}/api/streams?code=sekrit-key")
    finally:
        server.stop()
    logged = (tmp_path / "serve.log").read_text()
    assert "sekrit-key" not in logged
    assert re.search(r"127\.0\.0\.1 POST /api/streams/s 200 [\d.]+ ms\n", logged), logged
    assert re.search(r"127\.0\.0\.1 GET /api/streams 200 [\d.]+ ms\n", logged), logged


def test_options_that_contradict_are_refused_naming_both(local_store):
    here = ["--store", str(local_store.backend.root)]
    out(vault("publish", "s", "-", *here, input=lines_of(ROWS[:2])))
    for args, says in [
        (["streams", *here, "--key", "k"], "--key is the HTTP API's key, and --store reads no API"),
        (
            ["mirror", "s", "--to", str(local_store.backend.root), *here],
            "is the store the stream is read from",
        ),
        (["read", "s", *here, "--from", "0", "--from-time", "2026-01-01T00:00:00Z"], "--from or --from-time"),
        (["read", "s", *here, "--exclusive"], "give --group too"),
    ]:
        result = vault(*args)
        assert result.returncode == 2 and says in result.stderr.decode(), (args, result.stderr)
    # The key in the environment, for the commands that use it, is no contradiction.
    assert vault("streams", *here, env={"VAULT_API_KEY": "k"}).returncode == 0
