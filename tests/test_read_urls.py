"""Read URLs expire; a consumer need not. Through a stream's API URL, `open_reader` asks the API
for the read URL and renews it before it expires, so that it follows for as long as it runs, each
message once and in order, through renewals; a plain read URL that expired says so and where a
fresh one comes from. `vault serve` on Azurite, as a subprocess, with read URLs of a few seconds
(VAULT_READ_URL_SECONDS)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from azure.core.exceptions import HttpResponseError

import vault_core
from tests.support import ROOT
from tests.support.azurite import free_port
from tests.support.served import Served
from vault_core import Consumer, Message, ReadUrlExpired, VaultError
from vault_core.client import NotFound, Unauthorized, VaultClient
from vault_core.service import InvalidSetting, read_url_lifetime

LIFETIME = 3  # seconds a read URL lasts on the server under test
FOLLOW_SECONDS = 10.0  # more than three lifetimes of publishing while the readers follow
_names = itertools.count()


@pytest.fixture(scope="module")
def container() -> str:
    return "read-urls"


@pytest.fixture(scope="module")
def served(azurite, container) -> Iterator[Served]:
    server = Served(azurite.connection_string, container, env={"VAULT_READ_URL_SECONDS": str(LIFETIME)})
    yield server
    server.stop()


@pytest.fixture
def stream() -> str:
    return f"s-{next(_names)}"


def expiry_of(read_url: str) -> datetime:
    return datetime.fromisoformat(parse_qs(urlsplit(read_url).query)["se"][0])


def publishing(url: str, stream: str, seconds: float, **client: str) -> tuple[threading.Thread, list[str]]:
    """A producer thread publishing batches of one to three messages for `seconds`, then "end";
    the keys it published, in order."""
    keys: list[str] = []

    def run() -> None:
        with VaultClient(url, **client) as producer:
            deadline = time.monotonic() + seconds
            for n in itertools.count():
                batch = [f"m-{n}-{i}" for i in range(n % 3 + 1)] if time.monotonic() < deadline else ["end"]
                producer.publish(stream, [Message(k, k.encode()) for k in batch])
                keys.extend(batch)
                if batch == ["end"]:
                    return
                time.sleep(0.05)

    thread = threading.Thread(target=run, name="producer", daemon=True)
    thread.start()
    return thread, keys


def within(seconds: float, work: Callable[[], None]) -> None:
    """Runs `work` in a thread of its own and fails if it has not finished in `seconds` (a reader
    that stopped getting messages would otherwise wait for them for ever)."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as error:
            failed.append(error)

    thread = threading.Thread(target=run, name="reading", daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still reading after {seconds} s"
    if failed:
        raise failed[0]


def test_the_server_hands_out_read_urls_that_last_vault_read_url_seconds(served, stream):
    with VaultClient(served.url) as client:
        client.publish(stream, [Message("k", b"v")])
        before = datetime.now(UTC)
        info = client.stream_info(stream)
    assert before - timedelta(seconds=1) <= expiry_of(info.read_url) <= before + timedelta(seconds=LIFETIME)
    assert abs(info.expires_on - (before + timedelta(seconds=LIFETIME))) < timedelta(seconds=2)


def test_a_reader_from_the_api_url_follows_through_many_renewals_each_message_once_in_order(served, stream):
    with VaultClient(served.url) as client:
        client.publish(stream, [Message("first", b"")])
        first_url = client.stream_info(stream).read_url
    reader = vault_core.open_reader(f"{served.url}/api/streams/{stream}")
    producer, published = publishing(served.url, stream, FOLLOW_SECONDS)
    received: list[str] = []
    started = time.monotonic()

    def follow() -> None:
        for message in reader.follow(poll_interval=0.1):
            received.append(message.key)
            if message.key == "end":
                return

    within(FOLLOW_SECONDS + 15, follow)
    producer.join(5)
    assert received == ["first", *published] and len(published) > 50
    # It read on long after the read URL it started with had expired.
    assert time.monotonic() - started > 3 * LIFETIME
    with pytest.raises(ReadUrlExpired):
        vault_core.open_reader(first_url).position()
    reader.close()


def test_a_consumer_group_from_the_api_url_reads_on_through_renewals_and_a_restart(
    served, azurite, container, stream
):
    store = vault_core.open_store(azurite.connection_string, container=container)
    api_url = f"{served.url}/api/streams/{stream}"
    with VaultClient(served.url) as client:
        client.publish(stream, [Message("first", b"")])
    producer, published = publishing(served.url, stream, FOLLOW_SECONDS)
    received: list[str] = []
    positions: list[int] = []
    started = time.monotonic()

    def consume(stop_half_way: bool) -> None:
        with vault_core.open_reader(api_url) as reader, store.checkpoints("billing") as checkpoints:
            consumer = Consumer(reader, checkpoints)
            for batch in consumer.batches(follow=True, poll_interval=0.1):
                received.extend(m.key for m in batch.messages)
                if received[-1] == "end" or (
                    stop_half_way and time.monotonic() - started > FOLLOW_SECONDS / 2
                ):
                    consumer.commit(batch.next_position)  # handled: stopping here does not move it
                    positions.append(batch.next_position)
                    return

    within(FOLLOW_SECONDS, lambda: consume(stop_half_way=True))  # the first consumer stops half way
    within(FOLLOW_SECONDS + 15, lambda: consume(stop_half_way=False))  # the next resumes from there
    producer.join(5)
    assert received == ["first", *published] and len(published) > 50
    assert time.monotonic() - started > 3 * LIFETIME
    checkpoint = store.checkpoints("billing").get(stream)
    assert checkpoint is not None and checkpoint.position == positions[-1]
    store.close()


def test_a_read_url_storage_refuses_before_it_is_renewed_is_renewed_and_the_read_made_again(
    served, stream, monkeypatch
):
    """Clocks that differ can make a read URL expire before its renewal is due: the 403 renews it."""
    from vault_core import sources as renewing

    monkeypatch.setattr(renewing, "RENEW_AT", 1000.0)  # no renewal before storage refuses the URL
    with VaultClient(served.url) as client:
        client.publish(stream, [Message("a", b"")])
        with vault_core.open_reader(f"{served.url}/api/streams/{stream}") as reader:
            assert [m.key for m in reader.replay()] == ["a"]
            time.sleep(LIFETIME + 0.5)
            client.publish(stream, [Message("b", b"")])
            assert [m.key for m in reader.replay()] == ["a", "b"]


def test_an_expired_plain_read_url_says_it_expired_and_where_a_fresh_one_comes_from(azurite_store, stream):
    with azurite_store.writer(stream) as writer:
        writer.append([Message("k", b"v")])
    url = azurite_store.read_url(stream, expires_in=timedelta(seconds=1))
    reader = vault_core.open_reader(url)
    assert [m.key for m in reader.replay()] == ["k"]
    deadline = time.monotonic() + 5
    while datetime.now(UTC) <= expiry_of(url) + timedelta(milliseconds=200):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    for read in (lambda: list(reader.replay()), reader.status, lambda: reader.log.size()):
        with pytest.raises(ReadUrlExpired) as refused:
            read()
        message = str(refused.value)
        assert isinstance(refused.value, VaultError) and not isinstance(refused.value, HttpResponseError)
        assert f"read URL of stream {stream!r}" in message and "expired at" in message
        assert f"GET /api/streams/{stream}" in message and "open_reader" in message
        assert "sig=" not in message and "se=" not in message  # nothing of the SAS


def test_a_read_url_storage_refuses_before_its_expiry_may_have_expired(azurite_store, stream):
    with azurite_store.writer(stream) as writer:
        writer.append([Message("k", b"v")])
    url = azurite_store.read_url(stream)
    forged = url.replace("sig=", "sig=AAAA")  # a signature storage does not recognise
    with pytest.raises(ReadUrlExpired, match="refused by storage \\(403\\): it may have expired"):
        vault_core.open_reader(forged).position()


def test_the_api_key_is_required_and_sent_on_every_renewal(azurite, tmp_path, stream):
    server = Served(
        azurite.connection_string,
        "read-urls-keyed",
        "--api-key",
        "s3cret",
        env={"VAULT_READ_URL_SECONDS": "2"},
    )
    api_url = f"{server.url}/api/streams/{stream}"
    try:
        with VaultClient(server.url, key="s3cret") as client:
            client.publish(stream, [Message("a", b"")])
        with pytest.raises(Unauthorized):
            vault_core.open_reader(api_url)
        with pytest.raises(Unauthorized, match="not accepted"):
            vault_core.open_reader(api_url, key="wrong")
        with pytest.raises(NotFound):
            vault_core.open_reader(f"{server.url}/api/streams/nope", key="s3cret")
        for reader in (
            vault_core.open_reader(api_url, key="s3cret"),
            vault_core.open_reader(f"{api_url}?code=s3cret"),  # the key as Azure Functions takes it too
        ):
            with reader, VaultClient(server.url, key="s3cret") as client:
                before = [m.key for m in reader.replay()]
                time.sleep(2.2)  # its read URL expired: the next read renews it, with the key
                client.publish(stream, [Message(f"after-{len(before)}", b"")])
                assert [m.key for m in reader.replay()] == [*before, f"after-{len(before)}"]
    finally:
        server.stop()


def test_a_key_with_a_read_url_is_refused(azurite_store, stream):
    with azurite_store.writer(stream) as writer:
        writer.append([Message("k", b"v")])
    with pytest.raises(ValueError, match="key= is the HTTP API's key"):
        vault_core.open_reader(azurite_store.read_url(stream), key="s3cret")


@pytest.mark.parametrize("value", ["0", "-5", "abc", "1.5", "3600s", "٣"])
def test_a_read_url_lifetime_that_is_not_a_positive_whole_number_is_refused_naming_the_setting(value):
    with pytest.raises(InvalidSetting, match="VAULT_READ_URL_SECONDS must be a whole number of seconds"):
        read_url_lifetime(value)


def test_the_read_url_lifetime_defaults_to_an_hour_and_is_cut_to_seven_days():
    assert read_url_lifetime(None) == read_url_lifetime("") == timedelta(hours=1)
    assert read_url_lifetime("3") == read_url_lifetime(3) == timedelta(seconds=3)
    assert read_url_lifetime(" 86400 ") == timedelta(days=1)
    assert read_url_lifetime(str(30 * 86400)) == timedelta(days=7)


def test_vault_serve_refuses_to_start_with_a_bad_read_url_lifetime(tmp_path):
    started = subprocess.run(
        [
            sys.executable,
            "-m",
            "vault_core.cli",
            "serve",
            "--store",
            str(tmp_path),
            "--port",
            str(free_port()),
        ],
        cwd=ROOT,
        env={**os.environ, "VAULT_READ_URL_SECONDS": "an hour"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert started.returncode == 1
    assert "VAULT_READ_URL_SECONDS must be a whole number of seconds" in started.stderr
    assert "Traceback" not in started.stderr
