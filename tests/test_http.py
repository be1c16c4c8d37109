"""The HTTP contract over real sockets, against `vault serve` run as a subprocess, on both stores."""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest

import vault_core
from tests.support.served import Served
from vault_core import Message, transfer
from vault_core import http_models as http
from vault_core.client import KeyReused, NotFound, PayloadTooLarge, Unauthorized, VaultClient
from vault_core.lines import to_json

_names = itertools.count()


@pytest.fixture(scope="module", params=["local", "azurite"])
def served(request, tmp_path_factory) -> Iterator[Served]:
    if request.param == "local":
        target = str(tmp_path_factory.mktemp("served"))
    else:
        target = request.getfixturevalue("azurite").connection_string
    server = Served(target, f"http-{request.param}")
    yield server
    server.stop()


@pytest.fixture
def stream() -> str:
    return f"s-{next(_names)}"


def post(
    served: Served, stream: str, body: bytes, content_type: str = http.JSON, **headers: str
) -> httpx.Response:
    return httpx.post(
        f"{served.url}/api/streams/{stream}", content=body, headers={"content-type": content_type, **headers}
    )


def json_body(*messages: tuple[str, bytes]) -> bytes:
    return http.encode_json([Message(k, v) for k, v in messages])


def test_publish_json_then_read_it_through_the_read_url(served, stream):
    response = post(served, stream, json_body(("order-created", b"{}"), ("order-paid", b"\x00\xff")))
    assert response.status_code == 200
    body = response.json()
    assert body["stream"] == stream and len(body["offsets"]) == 2
    info = httpx.get(f"{served.url}/api/streams/{stream}").json()
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


def test_publish_binary(served, stream):
    messages = [Message("k", b"v" * 1000), Message("é", b""), Message("x" * 255, bytes(range(256)))]
    response = post(served, stream, transfer.encode_binary(messages), http.BINARY_BATCH)
    assert response.status_code == 200, response.text
    assert [(m.key, m.value) for m in served.store().reader(stream).replay()] == messages


def test_idempotency_key_retries_append_nothing(served, stream):
    body = json_body(("a", b"1"), ("b", b"2"))
    first = post(served, stream, body, **{"Idempotency-Key": "order-42"})
    again = post(served, stream, body, **{"Idempotency-Key": "order-42"})
    assert first.status_code == again.status_code == 200 and first.json() == again.json()
    other = post(served, stream, json_body(("a", b"changed")), **{"Idempotency-Key": "order-42"})
    assert other.status_code == 422 and other.headers["content-type"] == http.PROBLEM_JSON
    assert served.store().reader(stream).position() == first.json()["position"]


def test_listing_health_and_unknown_streams(served, stream):
    post(served, stream, json_body(("k", b"v")))
    listed = {s["stream"]: s for s in httpx.get(f"{served.url}/api/streams").json()["streams"]}
    status = served.store().reader(stream).status()
    assert listed[stream]["position"] == status.position
    assert datetime.fromisoformat(listed[stream]["last_append"]) == status.last_append
    assert httpx.get(f"{served.url}/api/health").status_code == 200
    missing = httpx.get(f"{served.url}/api/streams/never-written")
    assert missing.status_code == 404 and missing.json()["status"] == 404


def test_a_method_a_route_does_not_take_is_405_naming_those_it_does(served, stream):
    for method, path, allowed in [
        ("PUT", f"/api/streams/{stream}", {"GET", "HEAD", "POST"}),  # POST is answered before the router
        ("DELETE", "/api/streams", {"GET", "HEAD"}),
        ("POST", f"/api/streams/{stream}/batches/key", {"GET", "HEAD"}),
    ]:
        response = httpx.request(method, f"{served.url}{path}")
        assert response.status_code == 405 and response.json()["status"] == 405
        assert set(response.headers["allow"].split(", ")) == allowed
    assert stream not in served.store().streams()


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


def test_malformed_requests_get_a_problem_and_change_nothing(served, stream):
    good = post(served, stream, json_body(("first", b"1")))
    position = good.json()["position"]
    for content_type, body, status, mentions in MALFORMED:
        response = post(served, stream, body, content_type)
        assert response.status_code == status, (content_type, body[:60], response.text)
        assert response.headers["content-type"] == http.PROBLEM_JSON
        problem = response.json()
        assert problem["status"] == status and problem["type"].startswith(http.PROBLEM_BASE)
        assert problem["title"] and mentions.lower() in problem["detail"].lower(), problem
    bad_requests = [
        post(served, "Bad_Name", json_body(("k", b"v"))),
        post(served, "a" * 51, json_body(("k", b"v"))),
        post(served, stream, json_body(("k", b"v")), **{"Idempotency-Key": "has space"}),
        post(served, stream, json_body(("k", b"v")), **{"Idempotency-Key": "x" * 129}),
    ]
    assert [r.status_code for r in bad_requests] == [400] * 4
    assert all(r.headers["content-type"] == http.PROBLEM_JSON for r in bad_requests)
    assert served.store().reader(stream).position() == position
    assert [m.key for m in served.store().reader(stream).replay()] == ["first"]
    assert len(MALFORMED) + len(bad_requests) >= 30


def messages_body(*messages: dict) -> bytes:
    return json.dumps({"messages": list(messages)}).encode()


def test_a_json_value_is_text_stored_as_its_utf8_bytes_and_value_b64_holds_bytes(served, stream):
    response = post(
        served,
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
    assert [(m.key, m.value) for m in served.store().reader(stream).replay()] == [
        ("k", b"test"),
        ("é", "crème \u2603".encode()),
        ("raw", b"\xff\x00\xfe"),
        ("", b""),
        ("e", b""),
        ("looks-like-base64", b"AA=="),
    ]


def test_the_client_sends_text_as_value_and_other_bytes_as_value_b64(served, stream):
    messages = [Message("k", b"test"), Message("raw", b"\xff\x00\xfe")]
    assert json.loads(http.encode_json(messages)) == {
        "messages": [{"key": "k", "value": "test"}, {"key": "raw", "value_b64": "/wD+"}]
    }
    with VaultClient(served.url, binary=False) as client:
        client.publish(stream, messages)
    assert [(m.key, m.value) for m in served.store().reader(stream).replay()] == messages


def test_what_a_read_prints_can_be_posted_back_its_offset_and_timestamp_ignored(served, stream):
    source = [Message("order-created", b'{"order": 7}'), Message("order-paid", b"\xff\x00\xfe")]
    assert post(served, stream, json_body(*source)).status_code == 200
    printed = [json.loads(to_json(m)) for m in served.store().reader(stream).replay()]
    assert {"offset", "timestamp"} <= printed[0].keys() and "value_b64" in printed[1]
    copy = f"{stream}-copy"
    response = post(served, copy, messages_body(*printed))
    assert response.status_code == 200, response.text
    assert [(m.key, m.value) for m in served.store().reader(copy).replay()] == source


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
    served, stream, message, detail
):
    response = post(served, stream, messages_body({"key": "fine", "value": "ok"}, message))
    assert response.status_code == 400 and response.headers["content-type"] == http.PROBLEM_JSON
    assert response.json()["detail"].startswith(detail), response.json()
    assert stream not in served.store().streams()


def test_bodies_over_16_mib_are_refused(served, stream):
    big = bytes(http.MAX_BODY_BYTES + 1)
    assert post(served, stream, big, http.BINARY_BATCH).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused once the limit is passed
        for _ in range(20):
            yield bytes(1024 * 1024)

    response = httpx.post(
        f"{served.url}/api/streams/{stream}", content=chunks(), headers={"content-type": http.BINARY_BATCH}
    )
    assert response.status_code == 413
    assert served.store().reader(stream).position() == 0


def test_concurrent_producers_every_acknowledged_message_once(served, stream):
    acknowledged: dict[int, tuple[str, bytes]] = {}
    lock = threading.Lock()

    def produce(producer: int) -> None:
        with VaultClient(served.url, binary=producer % 2 == 0) as client:
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
    stored = {m.offset: (m.key, m.value) for m in served.store().reader(stream).replay()}
    assert stored == acknowledged and len(stored) == 8 * 12 * 25


def test_a_stream_held_by_another_writer_is_503_with_retry_after(served, stream):
    with served.store().writer(stream):
        response = post(served, stream, json_body(("k", b"v")))
    assert response.status_code == 503 and int(response.headers["retry-after"]) > 0
    assert response.headers["content-type"] == http.PROBLEM_JSON


def test_client_typed_errors_and_round_trip(served, stream):
    with VaultClient(f"{served.url}/api") as client:
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


def test_client_retries_while_the_stream_is_busy(tmp_path):
    server = Served(str(tmp_path), "vault")
    try:
        store = server.store()
        holder = store.writer("busy")
        threading.Timer(1.0, holder.close).start()  # the other writer goes away after a second
        with VaultClient(server.url) as client:
            result = client.publish("busy", [Message("k", b"v")])
        assert [m.offset for m in store.reader("busy").replay()] == result.offsets
    finally:
        server.stop()


def test_slow_commits_answer_202_with_a_location_that_resolves(tmp_path):
    server = Served(str(tmp_path), "vault", "--wait", "0")
    try:
        response = post(server, "slow", json_body(("k", b"v")), **{"Idempotency-Key": "slow-1"})
        assert response.status_code == 202
        location = response.headers["location"]
        assert location == http.batch_location("slow", "slow-1")
        deadline = time.monotonic() + 10
        while (status := httpx.get(server.url + location)).status_code == 202 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status.status_code == 200 and status.json()["position"] > 0
        with VaultClient(server.url) as client:  # the client follows 202s by itself
            assert client.publish("slow", [Message("k", b"w")]).position > status.json()["position"]
    finally:
        server.stop()


def test_api_key_is_required_when_set(tmp_path):
    server = Served(str(tmp_path), "vault", "--api-key", "s3cret")
    try:
        assert post(server, "s", json_body(("k", b"v"))).status_code == 401
        assert httpx.get(f"{server.url}/api/health").status_code == 200
        with pytest.raises(Unauthorized), VaultClient(server.url, key="wrong") as client:
            client.publish("s", [Message("k", b"v")])
        with VaultClient(server.url, key="s3cret") as client:
            assert client.publish("s", [Message("k", b"v")]).position > 0
    finally:
        server.stop()
