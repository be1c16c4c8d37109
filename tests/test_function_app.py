"""The Function App through the SDKs' own entry points: what the worker indexes, HTTP functions
called with real azure.functions.HttpRequest objects, and the orchestrator and entity run through
the Durable SDK's handles with the JSON the host sends. Only the host's message passing is stood
in for (tests/durable_host.py); storage is Azurite."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json

import azure.functions as func
import pytest

import vault_core
from tests.durable_host import FakeDurableHost, batch_op, entity_batch_json
from vault_core import Message
from vault_core import function_host as host_module
from vault_core import http_models as http

_containers = itertools.count()


@pytest.fixture(scope="module")
def functions():
    import function_app

    # The worker calls get_functions() once per app object; a second call would fail.
    return {f.get_function_name(): f for f in function_app.app.get_functions()}


@pytest.fixture
def settings(azurite, monkeypatch):
    container = f"app-{next(_containers)}"
    monkeypatch.setenv("VAULT_STORE", azurite.connection_string)
    monkeypatch.setenv("VAULT_CONTAINER", container)
    monkeypatch.setenv("VAULT_STAGING_CONTAINER", f"{container}-staging")
    monkeypatch.setenv("VAULT_WAIT_SECONDS", "10")
    for cached in (host_module.store, host_module.writers, host_module.staging):
        cached.cache_clear()
    yield vault_core.open_store(azurite.connection_string, container=container)
    host_module.writers().close()
    for cached in (host_module.store, host_module.writers, host_module.staging):
        cached.cache_clear()


@pytest.fixture
def durable(functions, settings):
    with FakeDurableHost(functions) as fake:
        yield fake


def run(coroutine):
    """Run the app's async function as the worker would, closing the Durable SDK's shared HTTP
    session inside the same event loop."""
    from azure.durable_functions.models.utils import http_utils

    async def runner():
        try:
            return await coroutine
        finally:
            await http_utils._close_session()

    return asyncio.run(runner())


def request(method: str, path: str, body: bytes = b"", route: dict | None = None, **headers: str):
    return func.HttpRequest(
        method=method,
        url=f"http://localhost:7071/api/{path}",
        headers=headers,
        route_params=route or {},
        body=body,
    )


def publish(functions, durable, stream: str, body: bytes, content_type: str = http.JSON, **headers: str):
    req = request(
        "POST", f"streams/{stream}", body, {"stream": stream}, **{"Content-Type": content_type, **headers}
    )
    return run(functions["publish"].get_user_function()(req=req, client=durable.client_json()))


def test_the_indexed_functions(functions):
    expected = {
        "publish": ("httpTrigger", "streams/{stream}", ["POST"], "FUNCTION"),
        "batch_status": ("httpTrigger", "streams/{stream}/batches/{token}", ["GET"], "FUNCTION"),
        "stream_info": ("httpTrigger", "streams/{stream}", ["GET"], "FUNCTION"),
        "list_streams": ("httpTrigger", "streams", ["GET"], "FUNCTION"),
        "health": ("httpTrigger", "health", ["GET"], "ANONYMOUS"),
    }
    for name, (trigger, route, methods, auth) in expected.items():
        bindings = [json.loads(b) for b in functions[name].get_raw_bindings()]
        http_in = next(b for b in bindings if b["type"] == trigger)
        assert (http_in["route"], http_in["methods"], http_in["authLevel"]) == (route, methods, auth)
        assert {"type": "http", "direction": "OUT", "name": "$return"} in bindings
    for name in ("publish", "batch_status"):
        assert any(json.loads(b)["type"] == "durableClient" for b in functions[name].get_raw_bindings())
    assert [json.loads(b)["type"] for b in functions["append_batch"].get_raw_bindings()] == [
        "orchestrationTrigger"
    ]
    assert [json.loads(b)["type"] for b in functions["stream_writer"].get_raw_bindings()] == ["entityTrigger"]
    assert set(functions) == {*expected, "append_batch", "stream_writer"}


def test_a_post_goes_through_orchestration_and_entity_to_committed_bytes(functions, durable, settings):
    messages = [Message("order-created", b'{"order": 1}'), Message("order-paid", b"\x00\x01")]
    response = publish(
        functions, durable, "orders", http.encode_json(messages), **{"Idempotency-Key": "order-1"}
    )
    assert response.status_code == 200, response.get_body()
    body = json.loads(response.get_body())
    stored = list(settings.reader("orders").replay())
    assert [(m.key, m.value) for m in stored] == messages
    assert body == {
        "stream": "orders",
        "position": settings.reader("orders").position(),
        "offsets": [m.offset for m in stored],
    }
    assert any(entry[:2] == ("rpc", "POST") for entry in durable.log)  # it started an orchestration


def test_large_batches_are_staged_not_sent_through_durable(functions, durable, settings):
    messages = [Message(f"k{i}", bytes([i]) * 100_000) for i in range(20)]  # 2 MB
    response = publish(functions, durable, "big", http.encode_binary(messages), http.BINARY_BATCH)
    assert response.status_code == 200, response.get_body()
    assert [(m.key, m.value) for m in settings.reader("big").replay()] == messages
    started = [e for e in durable.log if e[0] == "rpc" and e[1] == "POST"]
    assert all(len(e[3]) < 4096 for e in started)  # the orchestration input holds a reference


def test_retries_with_the_same_key_append_once_and_a_changed_body_is_422(functions, durable, settings):
    body = http.encode_json([Message("k", b"v")])
    first = publish(functions, durable, "s", body, **{"Idempotency-Key": "same"})
    again = publish(functions, durable, "s", body, **{"Idempotency-Key": "same"})
    assert first.status_code == again.status_code == 200
    assert json.loads(first.get_body()) == json.loads(again.get_body())
    durable.instances.pop("same")  # the orchestration history purged: only the entity remembers
    retried = publish(functions, durable, "s", body, **{"Idempotency-Key": "same"})
    assert json.loads(retried.get_body()) == json.loads(first.get_body())
    durable.instances.pop("same")
    changed = publish(
        functions, durable, "s", http.encode_json([Message("k", b"other")]), **{"Idempotency-Key": "same"}
    )
    assert changed.status_code == 422 and changed.mimetype == http.PROBLEM_JSON
    assert len(list(settings.reader("s").replay())) == 1


@pytest.mark.parametrize(
    ("stream", "content_type", "body", "status"),
    [
        ("Bad_Name", http.JSON, b'{"messages": [{"key": "k", "value": ""}]}', 400),
        ("s", http.JSON, b"{", 400),
        ("s", http.JSON, b'{"messages": []}', 400),
        ("s", http.JSON, b'{"messages": [{"key": "k", "value": "!!"}]}', 400),
        ("s", "text/plain", b"x", 415),
        ("s", http.BINARY_BATCH, http.BINARY_RECORD.pack(1, 2**20 + 1) + b"k" + bytes(2**20 + 1), 413),
    ],
)
def test_bad_requests_are_problems_and_start_nothing(
    functions, durable, settings, stream, content_type, body, status
):
    response = publish(functions, durable, stream, body, content_type)
    assert response.status_code == status and response.mimetype == http.PROBLEM_JSON
    problem = json.loads(response.get_body())
    assert problem["status"] == status and problem["detail"]
    assert not [e for e in durable.log if e[0] == "rpc" and e[1] == "POST"]
    assert settings.streams() == []


def test_a_slow_append_answers_202_and_its_location_resolves(functions, durable, settings, monkeypatch):
    monkeypatch.setenv("VAULT_WAIT_SECONDS", "0.2")
    durable.paused.set()  # the host is slow to run the orchestration
    response = publish(
        functions, durable, "slow", http.encode_json([Message("k", b"v")]), **{"Idempotency-Key": "slow-1"}
    )
    assert response.status_code == 202
    location = response.headers["Location"]
    assert location == http.batch_location("slow", "slow-1")
    durable.paused.clear()
    status_fn = functions["batch_status"].get_user_function()
    for _ in range(100):
        req = request("GET", location.removeprefix("/api/"), route={"stream": "slow", "token": "slow-1"})
        answer = run(status_fn(req=req, client=durable.client_json()))
        if answer.status_code != 202:
            break
    assert answer.status_code == 200 and json.loads(answer.get_body())["position"] > 0


def test_stream_info_lists_and_health(functions, durable, settings):
    publish(functions, durable, "info", http.encode_json([Message("k", b"v")]))
    info = functions["stream_info"].get_user_function()(
        request("GET", "streams/info", route={"stream": "info"})
    )
    body = json.loads(info.get_body())
    assert info.status_code == 200 and body["position"] == settings.reader("info").position()
    assert [m.key for m in vault_core.open_reader(body["read_url"]).replay()] == ["k"]
    missing = functions["stream_info"].get_user_function()(
        request("GET", "streams/nope", route={"stream": "nope"})
    )
    assert missing.status_code == 404 and missing.mimetype == http.PROBLEM_JSON
    listed = json.loads(functions["list_streams"].get_user_function()(request("GET", "streams")).get_body())
    assert listed == {"streams": [{"stream": "info", "position": body["position"]}]}
    assert functions["health"].get_user_function()(request("GET", "health")).status_code == 200


def test_an_entity_operation_executed_twice_appends_once(functions, settings):
    """What the runtime does after a crash: it runs the same operation batch again."""
    entity = functions["stream_writer"].get_user_function()
    batch = http.encode_binary([Message("k", b"")])
    payload = {"stream": "twice", "batch_id": "op-1", "inline": base64.b64encode(batch).decode()}
    operation = batch_op("append", json.dumps(payload))
    context = entity_batch_json("stream_writer", "twice", False, None, [operation])
    first = json.loads(entity(func.EntityContext(context)))
    second = json.loads(entity(func.EntityContext(context)))  # the same batch, state as before the crash
    assert first["results"][0]["result"] == second["results"][0]["result"]
    assert [m.key for m in settings.reader("twice").replay()] == ["k"]


def test_a_stream_whose_lease_is_held_elsewhere_is_503_with_retry_after(functions, durable, settings):
    body, key = http.encode_json([Message("k", b"v")]), {"Idempotency-Key": "held-1"}
    with settings.writer("held"):  # another process's writer still holds the lease
        response = publish(functions, durable, "held", body, **key)
    assert response.status_code == 503 and int(response.headers["Retry-After"]) > 0
    assert json.loads(response.get_body())["status"] == 503
    assert settings.reader("held").position() == 0
    retried = publish(functions, durable, "held", body, **key)  # the lease was given back
    assert retried.status_code == 200
    assert publish(functions, durable, "held", body, **key).get_body() == retried.get_body()
    assert len(list(settings.reader("held").replay())) == 1


def test_the_producer_client_against_the_function_app(functions, durable, settings):
    """The client's HTTP requests handed to the app's functions as the Functions host would
    route them (the host's dispatching is the one thing stood in for)."""
    import re

    import httpx

    from vault_core.client import KeyReused, VaultClient

    routes = [
        ("POST", re.compile(r"/api/streams/(?P<stream>[^/]+)$"), "publish"),
        ("GET", re.compile(r"/api/streams/(?P<stream>[^/]+)/batches/(?P<token>[^/]+)$"), "batch_status"),
        ("GET", re.compile(r"/api/streams/(?P<stream>[^/]+)$"), "stream_info"),
        ("GET", re.compile(r"/api/streams$"), "list_streams"),
    ]

    def dispatch(sent: httpx.Request) -> httpx.Response:
        for method, pattern, name in routes:
            match = pattern.match(sent.url.path)
            if sent.method == method and match:
                req = func.HttpRequest(
                    method=sent.method,
                    url=str(sent.url),
                    headers=dict(sent.headers),
                    route_params=match.groupdict(),
                    body=sent.read(),
                )
                function = functions[name].get_user_function()
                if name in ("publish", "batch_status"):
                    answer = run(function(req=req, client=durable.client_json()))
                else:
                    answer = function(req)
                return httpx.Response(
                    answer.status_code, headers=dict(answer.headers), content=answer.get_body()
                )
        return httpx.Response(404)

    with VaultClient("http://localhost:7071/api", transport=httpx.MockTransport(dispatch)) as client:
        messages = [Message(f"k{i}", bytes([i]) * 20_000) for i in range(5)]  # 100 KB: staged
        result = client.publish("via-client", messages, idempotency_key="c-1")
        assert client.publish("via-client", messages, idempotency_key="c-1") == result
        with pytest.raises(KeyReused):
            client.publish("via-client", messages[:1], idempotency_key="c-1")
        info = client.stream_info("via-client")
        assert [s.stream for s in client.streams()] == ["via-client"]
    assert [(m.key, m.value) for m in vault_core.open_reader(info.read_url).replay()] == messages
    assert info.position == result.position
