"""The HTTP contract over real sockets, against each host of the API: `vault serve` run as a
subprocess on both stores, and the Function App under the Durable host stand-in (its workers run
the app through Microsoft's worker library, which needs Python 3.13: there the Function App is the
host tested, and scripts/test.sh runs this module on 3.13 for it). What one host does and the other
does not (vault serve's 405s and 503s, the Function App's staging and orchestrations) is tested in
test_serve.py and tests/function_app/."""

from __future__ import annotations

import base64
import importlib.util
import itertools
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

import httpx
import pytest

import vault_core
from tests.support.posting import json_body, post
from tests.support.served import served_on
from vault_core import Message, transfer
from vault_core import http_models as http
from vault_core.client import KeyReused, NotFound, PayloadTooLarge, VaultClient
from vault_core.lines import to_json

_names = itertools.count()
HOSTS = ["function-app"] if importlib.util.find_spec("azure_functions_runtime") else ["local", "azurite"]


@dataclass
class Api:
    """A host of the API: its root URL (the routes are under /api) and the store it appends to."""

    url: str
    store: Callable[[], vault_core.Store]


@pytest.fixture(scope="module", params=HOSTS)
def api(request) -> Iterator[Api]:
    if request.param == "function-app":
        from tests.support.durable.host import DurableHost
        from tests.support.durable.settings import app_settings, scaled

        azurite = request.getfixturevalue("azurite")
        with DurableHost(app_settings(azurite, "http-function-app"), settings=scaled(0.1)) as host:
            store = vault_core.open_store(azurite.connection_string, container="http-function-app")
            yield Api(host.url.removesuffix("/api"), lambda: store)
        assert not host.errors, host.events
        return
    server = served_on(request, request.param, f"http-{request.param}")
    yield Api(server.url, server.store)
    server.stop()


@pytest.fixture
def stream() -> str:
    return f"s-{next(_names)}"


def test_publish_json_then_read_it_through_the_read_url(api, stream):
    response = post(api, stream, json_body(("order-created", b"{}"), ("order-paid", b"\x00\xff")))
    assert response.status_code == 200
    body = response.json()
    assert body["stream"] == stream and len(body["offsets"]) == 2
    info = httpx.get(f"{api.url}/api/streams/{stream}").json()
    assert info["position"] == body["position"] and info["stream"] == stream
    assert "expires_on" in info
    reader = vault_core.open_reader(info["read_url"])
    assert [(m.offset, m.key, m.value) for m in reader.replay()] == [
        (body["offsets"][0], "order-created", b"{}"),
        (body["offsets"][1], "order-paid", b"\x00\xff"),
    ]
    if info["read_url"].startswith("http"):  # a SAS URL: reading yes, writing no
        from azure.core.exceptions import HttpResponseError
        from azure.storage.blob import BlobClient

        with pytest.raises(HttpResponseError) as refused:
            BlobClient.from_blob_url(info["read_url"]).upload_page(bytes(512), offset=65536, length=512)
        assert refused.value.status_code == 403


def test_publish_binary(api, stream):
    messages = [Message("k", b"v" * 1000), Message("é", b""), Message("x" * 255, bytes(range(256)))]
    response = post(api, stream, transfer.encode_binary(messages), http.BINARY_BATCH)
    assert response.status_code == 200, response.text
    assert [(m.key, m.value) for m in api.store().reader(stream).replay()] == messages


def test_idempotency_key_retries_append_nothing(api, stream):
    body = json_body(("a", b"1"), ("b", b"2"))
    first = post(api, stream, body, **{"Idempotency-Key": "order-42"})
    again = post(api, stream, body, **{"Idempotency-Key": "order-42"})
    assert first.status_code == again.status_code == 200 and first.json() == again.json()
    other = post(api, stream, json_body(("a", b"changed")), **{"Idempotency-Key": "order-42"})
    assert other.status_code == 422 and other.headers["content-type"] == http.PROBLEM_JSON
    assert api.store().reader(stream).position() == first.json()["position"]


def test_listing_health_and_unknown_streams(api, stream):
    post(api, stream, json_body(("k", b"v")))
    listed = {s["stream"]: s for s in httpx.get(f"{api.url}/api/streams").json()["streams"]}
    status = api.store().reader(stream).status()
    assert listed[stream]["position"] == status.position
    assert datetime.fromisoformat(listed[stream]["last_append"]) == status.last_append
    assert httpx.get(f"{api.url}/api/health").status_code == 200
    missing = httpx.get(f"{api.url}/api/streams/never-written")
    assert missing.status_code == 404 and missing.json()["status"] == 404
    assert missing.headers["content-type"] == http.PROBLEM_JSON


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


MALFORMED = [
    # (content type, body, expected status, what the detail mentions)
    (http.JSON, b"{", 400, "not valid JSON"),
    (http.JSON, b"", 400, "not valid JSON"),
    (http.JSON, b"[]", 400, "body"),
    (http.JSON, b"null", 400, ""),
    (http.JSON, b'{"messages": []}', 400, "empty"),
    (http.JSON, b'{"messages": {}}', 400, "messages"),
    (http.JSON, b'{"messages": "x"}', 400, "messages"),
    (http.JSON, b'{"messages": [1]}', 400, "message 0: expected an object"),
    (http.JSON, b'{"messages": [{}]}', 400, "neither"),
    (http.JSON, b'{"messages": [{"key": "k"}]}', 400, "value_b64"),
    (http.JSON, b'{"messages": [{"key": "k", "value": "a", "value_b64": "AA=="}]}', 400, "not both"),
    (http.JSON, b'{"messages": [{"key": 5, "value": "x"}]}', 400, "key"),
    (http.JSON, b'{"messages": [{"key": "k", "value": 5}]}', 400, "text"),
    (http.JSON, b'{"messages": [{"key": "k", "value": null}]}', 400, "text"),
    (http.JSON, b'{"messages": [{"key": "k", "value": "\\ud800"}]}', 400, "JSON"),
    (http.JSON, b'{"messages": [{"key": "k", "value_b64": 5}]}', 400, "base64"),
    (http.JSON, b'{"messages": [{"key": "k", "value_b64": "!!!!"}]}', 400, "base64"),
    (http.JSON, b'{"messages": [{"key": "k", "value_b64": "AAA"}]}', 400, "base64"),
    (http.JSON, b'{"messages": [{"key": "k", "value": "x", "extra": 1}]}', 400, "extra"),
    (http.JSON, b'{"messages": [{"key": "k", "value": "x"}], "more": 1}', 400, "more"),
    (http.JSON, b'{"msgs": []}', 400, "messages"),
    (http.JSON, b"\xff\xfe", 400, "JSON"),
    (http.JSON, json.dumps({"messages": [{"key": "k" * 256, "value": ""}]}).encode(), 413, "255"),
    (http.JSON, json.dumps({"messages": [{"key": "é" * 128, "value": ""}]}).encode(), 413, "255"),
    (
        http.JSON,
        json.dumps({"messages": [{"key": "k", "value_b64": b64(bytes(2**20 + 1))}]}).encode(),
        413,
        "value",
    ),
    (http.JSON, json.dumps({"messages": [{"key": "k", "value": "é" * 2**19 + "x"}]}).encode(), 413, "value"),
    (http.JSON, json.dumps({"messages": [{"key": "k", "value": ""}] * 10_001}).encode(), 413, "10000"),
    ("text/plain", b"hello", 415, "text/plain"),
    ("", b"hello", 415, "(none)"),
    ("application/xml", b"<a/>", 415, "application/xml"),
    ("application/x-www-form-urlencoded", b"a=b", 415, "form"),
    (http.BINARY_BATCH, b"", 400, "empty"),
    (http.BINARY_BATCH, b"\x01", 400, "cut short"),
    (http.BINARY_BATCH, b"\x01\x05\x00\x00\x00k", 400, "past the end"),
    (http.BINARY_BATCH, b"\x02\x00\x00\x00\x00\xff\xfe", 400, "UTF-8"),
    (http.BINARY_BATCH, b"\x01\x01\x00\x00\x00kv\x01", 400, "cut short"),
    (http.BINARY_BATCH, transfer.BINARY_RECORD.pack(1, 2**20 + 1) + b"k" + bytes(2**20 + 1), 413, "value"),
    (http.BINARY_BATCH, transfer.encode_binary([Message("k", b"")] * 10_001), 413, "10000"),
]


def test_malformed_requests_get_a_problem_and_change_nothing(api, stream):
    good = post(api, stream, json_body(("first", b"1")))
    position = good.json()["position"]
    for content_type, body, status, mentions in MALFORMED:
        response = post(api, stream, body, content_type)
        assert response.status_code == status, (content_type, body[:60], response.text)
        assert response.headers["content-type"] == http.PROBLEM_JSON
        problem = response.json()
        assert problem["status"] == status and problem["type"].startswith(http.PROBLEM_BASE)
        assert problem["title"] and mentions.lower() in problem["detail"].lower(), problem
    bad_requests = [
        post(api, "Bad_Name", json_body(("k", b"v"))),
        post(api, "a" * 51, json_body(("k", b"v"))),
        post(api, stream, json_body(("k", b"v")), **{"Idempotency-Key": "has space"}),
        post(api, stream, json_body(("k", b"v")), **{"Idempotency-Key": "x" * 129}),
    ]
    assert [r.status_code for r in bad_requests] == [400] * 4
    assert all(r.headers["content-type"] == http.PROBLEM_JSON for r in bad_requests)
    assert api.store().reader(stream).position() == position
    assert [m.key for m in api.store().reader(stream).replay()] == ["first"]
    assert len(MALFORMED) + len(bad_requests) >= 30


def messages_body(*messages: dict) -> bytes:
    return json.dumps({"messages": list(messages)}).encode()


def test_a_json_value_is_text_stored_as_its_utf8_bytes_and_value_b64_holds_bytes(api, stream):
    response = post(
        api,
        stream,
        messages_body(
            {"key": "k", "value": "test"},
            {"key": "é", "value": "crème \u2603"},
            {"key": "raw", "value_b64": "/wD+"},
            {"value": ""},  # the key may be left out
            {"key": "e", "value_b64": ""},
            {"key": "looks-like-base64", "value": "AA=="},  # text all the same
        ),
    )
    assert response.status_code == 200, response.text
    assert [(m.key, m.value) for m in api.store().reader(stream).replay()] == [
        ("k", b"test"),
        ("é", "crème \u2603".encode()),
        ("raw", b"\xff\x00\xfe"),
        ("", b""),
        ("e", b""),
        ("looks-like-base64", b"AA=="),
    ]


def test_the_client_sends_text_as_value_and_other_bytes_as_value_b64(api, stream):
    messages = [Message("k", b"test"), Message("raw", b"\xff\x00\xfe")]
    assert json.loads(http.encode_json(messages)) == {
        "messages": [{"key": "k", "value": "test"}, {"key": "raw", "value_b64": "/wD+"}]
    }
    with VaultClient(api.url, binary=False) as client:
        client.publish(stream, messages)
    assert [(m.key, m.value) for m in api.store().reader(stream).replay()] == messages


def test_what_a_read_prints_can_be_posted_back_its_offset_and_timestamp_ignored(api, stream):
    source = [Message("order-created", b'{"order": 7}'), Message("order-paid", b"\xff\x00\xfe")]
    assert post(api, stream, json_body(*source)).status_code == 200
    printed = [json.loads(to_json(m)) for m in api.store().reader(stream).replay()]
    assert {"offset", "timestamp"} <= printed[0].keys() and "value_b64" in printed[1]
    copy = f"{stream}-copy"
    response = post(api, copy, messages_body(*printed))
    assert response.status_code == 200, response.text
    assert [(m.key, m.value) for m in api.store().reader(copy).replay()] == source


@pytest.mark.parametrize(
    ("message", "detail"),
    [
        (
            {"key": "k", "value": "a", "value_b64": "YQ=="},
            "message 1: give exactly one of value (text) and value_b64",
        ),
        (
            {"key": "k"},
            "message 1: give exactly one of value (text) and value_b64 (base64); this message has neither",
        ),
        ({"key": "k", "value": "a", "partition": 2}, "message 1: unknown field(s) ['partition']"),
        ({"key": "k", "value_b64": "YQ="}, "message 1: value_b64 is not valid base64"),
        ({"key": "k", "value_b64": "YQ==YQ=="}, "message 1: value_b64 is not valid base64"),
    ],
)
def test_a_json_message_that_is_not_the_one_shape_is_a_400_naming_it_and_appends_nothing(
    api, stream, message, detail
):
    response = post(api, stream, messages_body({"key": "fine", "value": "ok"}, message))
    assert response.status_code == 400 and response.headers["content-type"] == http.PROBLEM_JSON
    assert response.json()["detail"].startswith(detail), response.json()
    assert stream not in api.store().streams()


def test_bodies_over_16_mib_are_refused(api, stream):
    big = bytes(http.MAX_BODY_BYTES + 1)
    assert post(api, stream, big, http.BINARY_BATCH).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused once the limit is passed
        # 17 MiB: over the API's limit, within the Function App host's (17 MiB, local.settings),
        # past which the host answers before the app is asked (tests/function_app).
        for _ in range(17):
            yield bytes(1024 * 1024)

    response = httpx.post(
        f"{api.url}/api/streams/{stream}", content=chunks(), headers={"content-type": http.BINARY_BATCH}
    )
    assert response.status_code == 413
    assert api.store().reader(stream).position() == 0


def test_concurrent_producers_every_acknowledged_message_once(api, stream):
    acknowledged: dict[int, tuple[str, bytes]] = {}
    lock = threading.Lock()

    def produce(producer: int) -> None:
        with VaultClient(api.url, binary=producer % 2 == 0) as client:
            for n in range(12):
                messages = [
                    Message(f"p{producer}-{n}-{i}", bytes([producer]) * (n * 10 + i)) for i in range(25)
                ]
                result = client.publish(stream, messages)
                with lock:
                    acknowledged.update(zip(result.offsets, messages, strict=True))

    threads = [threading.Thread(target=produce, args=(p,)) for p in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = {m.offset: (m.key, m.value) for m in api.store().reader(stream).replay()}
    assert stored == acknowledged and len(stored) == 8 * 12 * 25


def test_client_typed_errors_and_round_trip(api, stream):
    with VaultClient(f"{api.url}/api") as client:
        result = client.publish(stream, [Message("k", b"v")], idempotency_key="once")
        assert client.publish(stream, [Message("k", b"v")], idempotency_key="once") == result
        with pytest.raises(KeyReused):
            client.publish(stream, [Message("k", b"other")], idempotency_key="once")
        with pytest.raises(PayloadTooLarge):
            client.publish(stream, [Message("k", bytes(2**20 + 1))])
        with pytest.raises(NotFound):
            client.stream_info("no-such-stream")
        with pytest.raises(vault_core.InvalidStreamName):
            client.publish("Bad", [Message("k", b"v")])
        info = client.stream_info(stream)
        assert info.position == result.position
        assert stream in [s.stream for s in client.streams()]
