"""The Function App on the Durable host stand-in (tests/support/durable): the app's real functions
in worker processes that run it through Microsoft's worker library, reached over HTTP through the
host's front door, with entity operations queued and delivered in batches, partitions and polling
as on the Azure Storage provider. Storage is Azurite. A few tests hand the entity one batch of
operations through a worker of its own, to pin down what it answers for each."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from azure.core.exceptions import HttpResponseError, ServiceRequestError

import vault_core
from tests.support import ROOT
from tests.support.durable import bindings, protocol
from tests.support.durable.channel import WorkerChannel
from tests.support.durable.host import DurableHost
from tests.support.durable.settings import Settings, app_settings, scaled
from tests.support.streams import contents
from vault_core import Message, transfer
from vault_core import http_models as http
from vault_core.client import KeyReused, VaultClient
from vault_core.functions import entity as entity_module
from vault_core.functions import http_handlers
from vault_core.functions.partitions import instance_id

_containers = itertools.count()


@pytest.fixture(scope="module")
def app(azurite):
    """The app on two instances (lease, visibility and drain times scaled down tenfold), its
    streams rolling every 64 KiB."""
    container = f"app-{next(_containers)}"
    with DurableHost(
        # Segments of 64 KiB: every stream past that rolls, as a long-lived one does at 1 TiB.
        app_settings(
            azurite,
            container,
            VAULT_PURGE_AFTER_HOURS="0",
            VAULT_READ_URL_SECONDS="120",
            VAULT_SEGMENT_BYTES="65536",
        ),
        settings=scaled(0.1),
    ) as host:
        host.store = vault_core.open_store(azurite.connection_string, container=container)
        host.staging = vault_core.open_store(azurite.connection_string, container=f"{container}-staging")
        yield host
    assert not host.errors, host.events


def post(app, stream: str, body: bytes, content_type: str = http.JSON, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{app.url}/streams/{stream}",
        content=body,
        headers={"content-type": content_type, **headers},
        timeout=60,
    )


def test_the_indexed_functions(app):
    """As the worker library indexes the app and reports it to the host."""
    assert app.instances[0].channel is not None
    functions = app.instances[0].channel.functions
    expected = {
        "publish": ("httpTrigger", "streams/{stream}", ["POST"], "FUNCTION"),
        "batch_status": ("httpTrigger", "streams/{stream}/batches/{token}", ["GET"], "FUNCTION"),
        "stream_info": ("httpTrigger", "streams/{stream}", ["GET"], "FUNCTION"),
        "list_streams": ("httpTrigger", "streams", ["GET"], "FUNCTION"),
        "health": ("httpTrigger", "health", ["GET"], "ANONYMOUS"),
        "stream_log": ("httpTrigger", "streams/{stream}/log", ["GET", "HEAD"], "FUNCTION"),
        "list_groups": ("httpTrigger", "groups", ["GET"], "FUNCTION"),
        "console": ("httpTrigger", "console/{*path}", ["GET"], "ANONYMOUS"),
        "openapi": ("httpTrigger", "openapi.json", ["GET"], "ANONYMOUS"),
    }
    for name, (trigger, route, methods, auth) in expected.items():
        bindings = functions[name].bindings
        http_in = next(b for b in bindings if b["type"] == trigger)
        assert (http_in["route"], http_in["methods"], http_in["authLevel"]) == (route, methods, auth)
        assert {"type": "http", "direction": "OUT", "name": "$return"} in bindings
    for name in ("publish", "batch_status", "purge_history"):
        assert any(b["type"] == "durableClient" for b in functions[name].bindings)
    types = {name: [b["type"] for b in functions[name].bindings] for name in functions}
    assert types["append_batch"] == ["orchestrationTrigger"]
    # The binding the SDK's entity_trigger declares, with the whole batch handed to our handle.
    assert list(functions["stream_writer"].bindings) == [
        {"direction": "IN", "type": "entityTrigger", "name": "context"}
    ]
    assert sorted(types["purge_history"]) == ["durableClient", "timerTrigger"]
    assert set(functions) == {*expected, "append_batch", "stream_writer", "purge_history"}


def test_a_post_goes_through_orchestration_and_entity_to_committed_bytes(app):
    messages = [Message("order-created", b'{"order": 1}'), Message("order-paid", b"\x00\x01")]
    response = post(app, "orders", http.encode_json(messages), **{"Idempotency-Key": "order-1"})
    assert response.status_code == 200, response.text
    stored = list(app.store.reader("orders").replay())
    assert [(m.key, m.value) for m in stored] == messages
    assert response.json() == {
        "stream": "orders",
        "position": app.store.reader("orders").position(),
        "offsets": [m.offset for m in stored],
    }
    record = app.record(instance_id("orders", "order-1"))
    assert record is not None and record.status == "Completed"


def test_large_batches_are_staged_never_sent_through_durable_and_deleted_once_committed(app):
    messages = [Message(f"k{i}", bytes([i]) * 100_000) for i in range(20)]  # 2 MB
    spilled = app.hub.spilled
    response = post(
        app, "big", transfer.encode_binary(messages), http.BINARY_BATCH, **{"Idempotency-Key": "big-1"}
    )
    assert response.status_code == 200, response.text
    assert contents(app.store, "big") == messages
    # Nothing went over Durable's queue (45 KB) or table (60 KB) limits into its blobs.
    assert app.hub.spilled == spilled
    record = app.record(instance_id("big", "big-1"))
    assert "inline" not in json.loads(record.input_text) and len(record.input_text) < 1024
    with pytest.raises(FileNotFoundError):  # the staged copy is deleted once committed
        app.staging.read_file(json.loads(record.input_text)["staged"])


def test_the_largest_inline_batch_stays_under_durables_message_limits(app):
    body = transfer.encode_binary([Message("k", b"x" * (entity_module.INLINE_BYTES - 6))])
    assert len(body) == entity_module.INLINE_BYTES
    spilled = app.hub.spilled
    response = post(app, "inline", body, http.BINARY_BATCH, **{"Idempotency-Key": "inline-1"})
    assert response.status_code == 200, response.text
    assert "inline" in json.loads(app.record(instance_id("inline", "inline-1")).input_text)
    assert app.hub.spilled == spilled


def test_retries_with_the_same_key_append_once_and_a_changed_body_is_422(app):
    body = http.encode_json([Message("k", b"v")])
    first = post(app, "retried", body, **{"Idempotency-Key": "same"})
    again = post(app, "retried", body, **{"Idempotency-Key": "same"})
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    app.hub.purge([instance_id("retried", "same")])  # history purged: the stream remembers
    retried = post(app, "retried", body, **{"Idempotency-Key": "same"})
    assert retried.status_code == 200 and retried.json() == first.json()
    changed = post(app, "retried", http.encode_json([Message("k", b"other")]), **{"Idempotency-Key": "same"})
    assert changed.status_code == 422 and changed.headers["content-type"] == http.PROBLEM_JSON
    app.hub.purge([instance_id("retried", "same")])
    changed = post(app, "retried", http.encode_json([Message("k", b"other")]), **{"Idempotency-Key": "same"})
    assert changed.status_code == 422  # found by the entity in the stream's batch ids
    assert len(contents(app.store, "retried")) == 1


def test_the_same_key_on_two_streams_is_two_appends(app):
    a = post(app, "key-a", http.encode_json([Message("on-a", b"1")]), **{"Idempotency-Key": "shared"})
    b = post(app, "key-b", http.encode_json([Message("on-b", b"22")]), **{"Idempotency-Key": "shared"})
    assert a.status_code == b.status_code == 200, (a.text, b.text)
    assert a.json()["stream"] == "key-a" and b.json()["stream"] == "key-b"
    assert contents(app.store, "key-a") == [("on-a", b"1")]
    assert contents(app.store, "key-b") == [("on-b", b"22")]
    assert b.json()["offsets"] == [m.offset for m in app.store.reader("key-b").replay()]
    status = httpx.get(f"{app.url}/streams/key-b/batches/shared", timeout=30)
    assert status.status_code == 200 and status.json() == b.json()
    elsewhere = httpx.get(f"{app.url}/streams/key-c/batches/shared", timeout=30)
    assert elsewhere.status_code == 404 and elsewhere.headers["content-type"] == http.PROBLEM_JSON


def test_instance_ids_are_valid_durable_instance_ids_on_their_entitys_partition():
    partitions = Settings.from_host_json().partition_count
    longest = instance_id("a" * 50, "K" * 128)
    assert len(longest) <= 256 and not set("/\\#?") & set(longest) and not longest.startswith("@")
    for stream, key in [("a", "k"), ("b", "k"), ("orders", "order-42"), ("a" * 50, "K" * 128)]:
        instance = instance_id(stream, key)
        assert instance == instance_id(stream, key)  # the same every time
        assert instance.startswith(f"{stream}:{key}:")
        entity = protocol.entity_instance_id("stream_writer", stream)
        assert protocol.partition_of(instance, partitions) == protocol.partition_of(entity, partitions)
    assert instance_id("a", "k") != instance_id("b", "k")


@pytest.mark.parametrize(
    ("stream", "content_type", "body", "status"),
    [
        ("Bad_Name", http.JSON, b'{"messages": [{"key": "k", "value": ""}]}', 400),
        ("s", http.JSON, b"{", 400),
        ("s", http.JSON, b'{"messages": []}', 400),
        ("s", http.JSON, b'{"messages": [{"key": "k", "value_b64": "!!"}]}', 400),
        ("s", http.JSON, b'{"messages": [{"key": "k", "value": "a", "value_b64": "YQ=="}]}', 400),
        ("s", http.JSON, b'{"messages": [{"key": "k", "value": "a", "partition": 2}]}', 400),
        ("s", "text/plain", b"x", 415),
        ("s", http.BINARY_BATCH, transfer.BINARY_RECORD.pack(1, 2**20 + 1) + b"k" + bytes(2**20 + 1), 413),
    ],
)
def test_bad_requests_are_problems_and_start_nothing(app, stream, content_type, body, status):
    before = len(app.hub.records)
    response = post(app, stream, body, content_type)
    assert response.status_code == status and response.headers["content-type"] == http.PROBLEM_JSON
    problem = response.json()
    assert problem["status"] == status and problem["detail"]
    assert len(app.hub.records) == before
    assert "s" not in app.store.streams()


def test_a_start_the_runtime_refuses_is_a_503_problem_and_a_retry_lands_once(app):
    """The runtime can refuse to start an orchestration (its storage failing, throttling): the
    SDK raises, and the status of an instance that was never created is a 404. The producer
    must not be told the batch was accepted."""
    body = http.encode_json([Message("k", b"refused")])
    with app.fail_client_calls(start=1):
        refused = post(app, "refused", body, **{"Idempotency-Key": "refused-1"})
    assert refused.status_code == 503 and refused.headers["content-type"] == http.PROBLEM_JSON
    assert "location" not in refused.headers and refused.headers["retry-after"]
    assert "Idempotency-Key" in refused.json()["detail"]
    assert app.record(instance_id("refused", "refused-1")) is None
    assert "refused" not in app.store.streams()
    again = post(app, "refused", body, **{"Idempotency-Key": "refused-1"})
    assert again.status_code == 200, again.text
    assert contents(app.store, "refused") == [("k", b"refused")]


def test_a_status_the_runtime_cannot_give_is_a_503_not_a_guess(app):
    """The SDK reads a failed status query (500) as a status object as falsy as an unknown
    instance's: neither the POST nor the status location may take it for "no such append"."""
    body = http.encode_json([Message("k", b"unsure")])
    with app.fail_client_calls(status=1):
        unsure = post(app, "unsure", body, **{"Idempotency-Key": "unsure-1"})
    assert unsure.status_code == 503 and unsure.headers["content-type"] == http.PROBLEM_JSON
    assert app.record(instance_id("unsure", "unsure-1")) is None  # nothing started
    done = post(app, "unsure", body, **{"Idempotency-Key": "unsure-1"})
    assert done.status_code == 200, done.text
    origin = f"http://{httpx.URL(app.url).netloc.decode()}"
    with app.fail_client_calls(status=1):
        location = httpx.get(origin + http.batch_location("unsure", "unsure-1"), timeout=30)
    assert location.status_code == 503 and location.headers["content-type"] == http.PROBLEM_JSON
    assert httpx.get(origin + http.batch_location("unsure", "unsure-1"), timeout=30).json() == done.json()


def test_a_status_ask_that_fails_while_the_append_runs_is_asked_again(app):
    entity = protocol.entity_instance_id("stream_writer", "asked-again")
    answers: list[httpx.Response] = []
    with app.holding(entity):
        thread = threading.Thread(
            target=lambda: answers.append(
                post(app, "asked-again", http.encode_json([Message("k", b"v")]), **{"Idempotency-Key": "a-1"})
            )
        )
        thread.start()
        instance = instance_id("asked-again", "a-1")
        deadline = time.monotonic() + 30
        while app.record(instance) is None:  # started: the POST now waits for its answer
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with app.fail_client_calls(status=2):
            time.sleep(1)
    thread.join(60)
    assert app.stats["client status calls failed"] >= 2
    assert answers and answers[0].status_code == 200, answers
    assert contents(app.store, "asked-again") == [("k", b"v")]


def test_an_operation_the_entity_cannot_read_stops_no_append(app):
    """An operation whose input is not an append (from another version of the app, say) is
    answered on its own. Raising would fail the entity's whole batch, which the runtime delivers
    again and again with no limit: no append to the stream would ever commit."""
    entity = protocol.entity_instance_id("stream_writer", "poisoned")
    post(app, "poisoned", http.encode_json([Message("first", b"")]), **{"Idempotency-Key": "p-0"})
    with app.holding(entity):  # the foreign operations and the next append in one batch
        app.signal(entity, "append", None)
        app.signal(entity, "append", json.dumps("{not json"))
        app.signal(entity, "append", json.dumps(json.dumps({"stream": "poisoned"})))
        app.signal(entity, "compact", None)
        thread = threading.Thread(
            target=lambda: post(
                app, "poisoned", http.encode_json([Message("next", b"")]), **{"Idempotency-Key": "p-1"}
            )
        )
        thread.start()
        time.sleep(0.5)
    thread.join(60)
    assert contents(app.store, "poisoned") == [("first", b""), ("next", b"")]
    aborted = app.stats["aborted work items"]
    response = post(app, "poisoned", http.encode_json([Message("then", b"")]), **{"Idempotency-Key": "p-2"})
    assert response.status_code == 200, response.text
    assert app.stats["aborted work items"] == aborted


def test_a_slow_append_answers_202_and_its_location_resolves(app):
    entity = protocol.entity_instance_id("stream_writer", "slow")
    origin = f"http://{httpx.URL(app.url).netloc.decode()}"
    with app.holding(entity):  # the entity's queue is backed up
        response = post(app, "slow", http.encode_json([Message("k", b"v")]), **{"Idempotency-Key": "slow-1"})
        assert response.status_code == 202, response.text
        location = response.headers["Location"]
        assert location == http.batch_location("slow", "slow-1")
        assert httpx.get(origin + location, timeout=30).status_code == 202
    for _ in range(100):
        answer = httpx.get(origin + location, timeout=30)
        if answer.status_code != 202:
            break
    assert answer.status_code == 200, answer.text
    assert contents(app.store, "slow") == [("k", b"v")]
    assert answer.json()["position"] == app.store.reader("slow").position()


def test_the_app_takes_a_stream_from_another_writer_at_once(app):
    """The entity is the stream's rightful owner on the Function App: a writer elsewhere (an
    operator's `vault publish`) is fenced rather than waited for."""
    other = app.store.writer("taken", lease_seconds=60)
    other.append([Message("other", b"")])
    response = post(app, "taken", http.encode_json([Message("app", b"")]))
    assert response.status_code == 200, response.text
    with pytest.raises(vault_core.FencedError):
        other.append([Message("late", b"")])
    other.close()
    assert contents(app.store, "taken") == [("other", b""), ("app", b"")]


def test_a_finished_append_that_gave_up_runs_again_on_the_next_post(app):
    body = http.encode_json([Message("k", b"v")])
    instance = instance_id("gave-up", "g-1")
    with app.store.writer("gave-up"):  # an orchestration that exhausted its retries
        pass
    gave_up = {"problem": {"type": "x", "title": "t", "status": 503, "detail": "d"}, "retry": True}
    digest = hashlib.sha256(transfer.encode_binary([Message("k", b"v")])).hexdigest()
    app.hub.records[instance] = protocol_record(instance, {"stream": "gave-up", "digest": digest}, gave_up)
    response = post(app, "gave-up", body, **{"Idempotency-Key": "g-1"})
    assert response.status_code == 200, response.text
    assert contents(app.store, "gave-up") == [("k", b"v")]


def protocol_record(instance: str, payload: dict, output: dict):
    from tests.support.durable.taskhub import Record

    return Record(instance, "append_batch", input_text=json.dumps(payload), status="Completed", output=output)


def test_read_urls_last_vault_read_url_seconds_and_a_reader_asks_the_api_url_for_them(app):
    post(app, "short-lived", http.encode_json([Message("k", b"v")]))
    before = datetime.now(UTC)
    info = httpx.get(f"{app.url}/streams/short-lived", timeout=30).json()
    expiry = datetime.fromisoformat(parse_qs(urlsplit(info["read_url"]).query)["se"][0])
    assert before + timedelta(seconds=110) <= expiry <= before + timedelta(seconds=121)  # not an hour
    assert abs(datetime.fromisoformat(info["expires_on"]) - expiry) < timedelta(seconds=5)
    with vault_core.open_reader(f"{app.url}/streams/short-lived") as reader:
        assert [m.key for m in reader.replay()] == ["k"]


def test_the_producer_client_against_the_function_app(app):
    with VaultClient(app.url) as client:
        messages = [Message(f"k{i}", bytes([i]) * 20_000) for i in range(5)]  # 100 KB: staged
        result = client.publish("via-client", messages, idempotency_key="c-1")
        assert client.publish("via-client", messages, idempotency_key="c-1") == result
        with pytest.raises(KeyReused):
            client.publish("via-client", messages[:1], idempotency_key="c-1")
        info = client.stream_info("via-client")
        assert "via-client" in [s.stream for s in client.streams()]
    assert [(m.key, m.value) for m in vault_core.open_reader(info.read_url).replay()] == messages
    assert info.position == result.position


def test_concurrent_producers_on_one_stream_commit_together(app):
    """The runtime hands the entity the operations queued meanwhile; they share data writes and
    commits (the commit record counts them), each still whole and at its own offsets."""
    results: dict[str, vault_core.AppendResult] = {}

    def produce(n: int) -> None:
        with VaultClient(app.url) as client:
            for i in range(3):
                key = f"p{n}-{i}"
                results[key] = client.publish("shared", [Message(key, key.encode())], idempotency_key=key)

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    by_offset = {m.offset: m for m in app.store.reader("shared").replay()}
    assert len(by_offset) == len(results) == 72
    for key, result in results.items():
        assert by_offset[result.offsets[0]].key == key
    commits = app.store.reader("shared").commit_record().counter
    assert commits < 72 / 2, f"{commits} commits for 72 appends"


def test_the_post_asks_for_the_status_at_growing_intervals(app):
    """A POST that waits 3 s for its append asks the runtime for the status a handful of times
    (each ask is a storage read), not every 50 ms."""
    with app.holding(protocol.entity_instance_id("stream_writer", "polled")):
        before = app.stats["status requests"]
        response = post(app, "polled", http.encode_json([Message("k", b"v")]))
        asked = app.stats["status requests"] - before
    assert response.status_code == 202
    assert 3 <= asked <= 15


def test_the_purge_timer_forgets_finished_appends_only(app):
    post(app, "purged", http.encode_json([Message("k", b"v")]), **{"Idempotency-Key": "p-1"})
    finished = instance_id("purged", "p-1")
    assert app.record(finished) is not None
    entity = protocol.entity_instance_id("stream_writer", "purged")
    app.hub.records["still-running"] = protocol_record("still-running", {}, {})
    app.hub.records["still-running"].status = "Running"
    try:
        reply = app.run_timer("purge_history")
        assert reply.error is None, reply
        assert app.record(finished) is None
        assert app.record("still-running") is not None  # running orchestrations are kept
        assert app.record(entity) is not None  # and the entities' state
    finally:
        app.hub.records.pop("still-running", None)


def test_the_purge_takes_a_few_hours_each_hour_everything_once_a_day_and_outlives_a_failure(app):
    """Purging from 2000 on every run makes each one scan and delete all it finds, and the SDK's
    session gives up after 240 s on a large Instances table: an hourly run purges the appends of
    the last hours before its cut-off (VAULT_PURGE_AFTER_HOURS, 0 here), the first of a UTC day
    all of them, and a purge the runtime fails is logged, not raised."""
    now = time.time()
    for name, hours in (("aged-recent", 2), ("aged-old", 30)):
        app.hub.records[name] = protocol_record(name, {}, {})
        app.hub.records[name].created = now - hours * 3600
    try:
        with app.fail_client_calls(purge=1):
            failed = app.run_timer("purge_history", last_run=datetime.now(UTC))
        assert failed.error is None, failed.error
        assert app.stats["client purge calls failed"] == 1
        assert app.record("aged-recent") is not None and app.record("aged-old") is not None
        hourly = app.run_timer("purge_history", last_run=datetime.now(UTC))
        assert hourly.error is None, hourly.error
        assert app.record("aged-recent") is None and app.record("aged-old") is not None
        daily = app.run_timer("purge_history", last_run=datetime.now(UTC) - timedelta(days=1))
        assert daily.error is None, daily.error
        assert app.record("aged-old") is None
    finally:
        app.hub.records.pop("aged-recent", None)
        app.hub.records.pop("aged-old", None)


@pytest.mark.parametrize("window_minutes", [30, None])
def test_the_entitys_saved_state_does_not_grow_with_traffic(azurite, window_minutes):
    """After each batch the extension saves the entity's scheduler state, and its message sorter
    keeps an entry per calling orchestration (one per append) for the reorder window: 30 minutes
    by default, about 1,800 entries at one append a second. host.json turns sorting off (batch ids
    keep appends exactly once); with the default the state grows by an entry per append."""
    overrides = {} if window_minutes is None else {"reorder_window_minutes": window_minutes}
    container = f"app-{next(_containers)}"
    with DurableHost(
        app_settings(azurite, container), instances=1, settings=scaled(0.1, **overrides)
    ) as host:
        for n in range(30):
            response = post(
                host, "steady", http.encode_json([Message("k", b"v")]), **{"Idempotency-Key": f"s-{n}"}
            )
            assert response.status_code == 200, response.text
        record = host.record(protocol.entity_instance_id("stream_writer", "steady"))
        saved = protocol.scheduler_state(record)
    state = json.loads(saved)
    assert json.loads(state["state"])["appends"] == 30 and state["exists"] is True
    if window_minutes is None:
        assert state["sorter"] == {} and "queue" not in state
        assert len(saved) < 200, saved
    else:
        assert len(state["sorter"]["ReceivedFromInstance"]) == 30
        assert len(saved) > 30 * 60


def test_http_functions_and_durable_triggers_run_on_instances_of_their_own_groups(app):
    """Flex Consumption scales the HTTP functions and the Durable triggers as two groups: an
    append's start always crosses from an HTTP instance to a Durable one."""
    response = post(app, "grouped", http.encode_json([Message("k", b"v")]), **{"Idempotency-Key": "g-1"})
    assert response.status_code == 200, response.text
    durable = {"append_batch", "stream_writer"}
    ran = {group: set() for group in ("http", "durable")}
    for instance in app.instances:
        if instance.group in ran:
            ran[instance.group] |= set(instance.ran)
    assert "publish" in ran["http"] and not ran["http"] & durable
    assert durable <= ran["durable"] and ran["durable"] <= durable


def test_after_idle_the_first_append_waits_for_both_groups_to_start_and_lands(azurite):
    container = f"app-{next(_containers)}"
    with DurableHost(app_settings(azurite, container), instances=1, settings=scaled(0.1)) as host:
        host.settle()
        host.scale_to_zero("http")
        host.scale_to_zero("durable")
        assert not host.live("http") and not host.live("durable")
        response = post(
            host, "after-idle", http.encode_json([Message("k", b"v")]), **{"Idempotency-Key": "i-1"}
        )
        assert response.status_code in (200, 202), response.text
        assert host.stats["http cold starts"] == 1
        deadline = time.monotonic() + 60
        while host.stats["durable cold starts"] < 1 or not contents(
            host_store(azurite, container), "after-idle"
        ):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert len(host.cold_starts) >= 4 and min(host.cold_starts) > 0


def publish_at_once(host: DurableHost, stream: str, count: int) -> list[httpx.Response]:
    """`count` producers publish to the stream at the same moment, while its entity is held back,
    so that every request is in flight at once."""
    answers: list[httpx.Response] = []

    def one(n: int) -> None:
        body = http.encode_json([Message("k", str(n).encode())])
        answers.append(post(host, stream, body, **{"Idempotency-Key": f"{stream}-{n}"}))

    threads = [threading.Thread(target=one, args=(n,)) for n in range(count)]
    with host.holding(protocol.entity_instance_id("stream_writer", stream)):
        for thread in threads:
            thread.start()
        time.sleep(1.5)
    for thread in threads:
        thread.join(60)
    return answers


def test_concurrent_requests_scale_the_http_group_by_its_per_instance_concurrency(azurite):
    """Python's default on Flex Consumption is one request per instance: every waiting producer
    would hold an instance of its own. The Bicep lets one instance serve many."""
    deployed = Settings.from_host_json().http_concurrency
    assert deployed >= 8
    for concurrency, producers, instances in ((1, 3, 3), (deployed, 6, 1)):
        settings = scaled(0.1, http_concurrency=concurrency)
        with DurableHost(
            app_settings(azurite, f"app-{next(_containers)}"), instances=1, settings=settings
        ) as host:
            answers = publish_at_once(host, "concurrent", producers)
            assert len(answers) == producers and all(a.status_code == 200 for a in answers), answers
            assert len(host.live("http")) == instances, (concurrency, len(host.live("http")))


def host_store(azurite, container: str) -> vault_core.Store:
    return vault_core.open_store(azurite.connection_string, container=container)


def test_a_body_over_the_hosts_limit_is_refused_before_it_is_read(app):
    """The deployment sets FUNCTIONS_REQUEST_BODY_SIZE_LIMIT a little over the API's 16 MiB: the
    host answers a larger declared body with a 500 without reading it; one just over 16 MiB still
    reaches the app, whose answer says what is wrong."""
    limit = int(app.app_settings["FUNCTIONS_REQUEST_BODY_SIZE_LIMIT"])
    assert http.MAX_BODY_BYTES < limit <= http.MAX_BODY_BYTES + 2**20
    origin = httpx.URL(app.url)
    with socket.create_connection((origin.host, origin.port), timeout=30) as connection:
        connection.sendall(
            f"POST /api/streams/too-big HTTP/1.1\r\nHost: x\r\nContent-Type: {http.BINARY_BATCH}\r\n"
            f"Content-Length: {limit + 1}\r\n\r\n".encode()
        )
        status = connection.recv(4096).split(b"\r\n")[0]
    assert status == b"HTTP/1.1 500 Internal Server Error", status
    over = post(app, "too-big", b"\x00" * (http.MAX_BODY_BYTES + 1024), http.BINARY_BATCH)
    assert over.status_code == 413 and over.headers["content-type"] == http.PROBLEM_JSON
    assert "too-big" not in app.store.streams()


def test_the_wait_counts_from_the_requests_arrival(azurite):
    """The front end drops a request after 230 s: a POST answers within its wait from arrival,
    the time spent parsing and staging the batch included (staging is slowed here by 3 s)."""
    assert http_handlers.MAX_WAIT_SECONDS <= 230 - 20
    container = f"app-{next(_containers)}"
    values = app_settings(
        azurite, container, VAULT_WAIT_SECONDS="4", STANDIN_SLOW_CALLS="vault_core.functions.entity:stage=3*1"
    )
    body = transfer.encode_binary([Message("k", bytes(entity_module.INLINE_BYTES))])  # staged
    with (
        DurableHost(values, instances=1, settings=scaled(0.1)) as host,
        host.holding(protocol.entity_instance_id("stream_writer", "arrival")),
    ):
        started = time.monotonic()
        response = post(host, "arrival", body, http.BINARY_BATCH, **{"Idempotency-Key": "arr-1"})
        took = time.monotonic() - started
    assert response.status_code == 202, response.text
    assert 4 <= took < 6, f"{took:.1f} s"


def test_the_stand_ins_front_end_stops_waiting_at_its_limit(azurite):
    """Whatever the function timeout, the front end answers 502 when a function has not answered
    in time (230 s on Azure, 1 s here); the function runs on."""
    container = f"app-{next(_containers)}"
    values = app_settings(
        azurite, container, STANDIN_SLOW_CALLS="vault_core.functions.http_handlers:health=3*1"
    )
    with DurableHost(values, instances=1, settings=scaled(0.1, front_end_timeout=1.0)) as host:
        started = time.monotonic()
        slow = httpx.get(f"{host.url}/health", timeout=30)
        assert slow.status_code == 502 and time.monotonic() - started < 2.5
        assert host.stats["requests past the front end's limit"] == 1
        assert httpx.get(f"{host.url}/health", timeout=30).status_code == 200


def test_host_json_keeps_latency_low_and_batches_inside_the_stream_memory():
    settings = Settings.from_host_json()
    assert settings.max_polling_interval <= 2  # the default 30 s makes the first POST after idle a 202
    assert settings.partition_count > 4  # lets more than 4 instances share the work
    # A batch the runtime runs again (after a crash) must find all its appends among the
    # stream's last 1,024 batch ids.
    assert settings.max_entity_batch <= 1024
    assert settings.function_timeout >= entity_module.ENTITY_BUDGET_SECONDS * 4
    assert settings.reorder_window == 0  # the entity's state keeps no entry per append
    provider = json.loads((ROOT / "host.json").read_text())["extensions"]["durableTask"]["storageProvider"]
    # Its default differs between extension 2.x (false) and 3.x (true); the bundle allows either.
    assert provider["useTablePartitionManagement"] is True


# --- one batch of operations for the entity, through a worker of its own ---------------------------


@pytest.fixture
def entity(azurite, tmp_path):
    """Runs the app's entity function on one batch of operations, as the host hands it one: an
    InvocationRequest to a worker process running the app through the worker library."""
    container = f"entity-{next(_containers)}"
    env = {**os.environ, "FUNCTIONS_WORKER_RUNTIME": "python", **app_settings(azurite, container)}
    with open(tmp_path / "worker.log", "ab") as log:
        channel = WorkerChannel(env, log, "entity")
        function = channel.functions["stream_writer"]

        def raw(stream: str, operations: list[tuple[str, str | None]], state: str | None = None):
            """The operations as (name, the orchestration's JSON text or None)."""
            requests = [
                {"op": op, "input": None if text is None else json.dumps(text)} for op, text in operations
            ]
            context = protocol.entity_batch("stream_writer", stream, state is not None, state, requests)
            invocation = channel.invoke(function, bindings.inputs(function, context=context))
            reply = bindings.answer(invocation.result(120))
            assert reply.error is None and reply.result is not None, reply.error
            answer = json.loads(reply.result)
            assert answer["signals"] == [] and answer["entityExists"]
            return [json.loads(r["result"]) for r in answer["results"]], answer["entityState"]

        def run(stream: str, payloads: list[dict], state: str | None = None) -> tuple[list, str]:
            return raw(stream, [("append", json.dumps(p)) for p in payloads], state)

        run.raw = raw
        run.staging_container = f"{container}-staging"
        run.store = vault_core.open_store(azurite.connection_string, container=container)
        run.staging = vault_core.open_store(azurite.connection_string, container=f"{container}-staging")
        try:
            yield run
        finally:
            channel.kill()


def payload(stream: str, key: str, messages: list[Message], staged_in=None) -> dict:
    batch = transfer.encode_binary(messages)
    digest = hashlib.sha256(batch).hexdigest()
    item = {"stream": stream, "batch_id": key, "digest": digest}
    if staged_in is None:
        item["inline"] = base64.b64encode(batch).decode()
    else:
        item["staged"] = f"{stream}/{key}/{digest}"
        staged_in.write_file(item["staged"], batch)
    return item


def test_the_entity_commits_a_batch_of_operations_together_each_with_its_answer(entity):
    ops = [payload("s", f"id-{i}", [Message(f"m{i}", b"x" * i)]) for i in range(10)]
    ops.append(payload("s", "id-3", [Message("m3", b"xxx")]))  # delivered twice: one copy
    ops.append(payload("s", "id-4", [Message("not-m4", b"")]))  # an id reused for other messages
    ops.append(payload("s", "big", [Message("b", bytes(300_000))], staged_in=entity.staging))
    answers, state = entity("s", ops)
    # Commit 0 is the new stream's first, empty one; commit 1 holds all the batches.
    assert entity.store.reader("s").commit_record().counter == 1
    assert all("position" in a for a in answers[:10]) and answers[10] == answers[3]
    assert answers[11]["problem"]["status"] == 422 and answers[11]["retry"] is False
    assert "position" in answers[12]
    stored = contents(entity.store, "s")
    assert stored == [(f"m{i}", b"x" * i) for i in range(10)] + [("b", bytes(300_000))]
    assert json.loads(state) == {"appends": 12, "position": entity.store.reader("s").position()}
    with pytest.raises(FileNotFoundError):
        entity.staging.read_file(ops[12]["staged"])
    # The runtime runs the same batch again (its worker died before the checkpoint): the staged
    # batch is gone, the stream's batch ids answer, nothing is appended twice.
    again, _ = entity("s", ops, state)
    assert again == answers
    assert contents(entity.store, "s") == stored


def test_the_entity_answers_each_operation_it_cannot_read_and_appends_the_others(entity):
    good = payload("mixed", "good-1", [Message("a", b"1")])
    operations = [
        None,  # no input
        "{not json",
        json.dumps([1, 2]),
        json.dumps({"stream": "mixed", "batch_id": "x", "digest": "d"}),  # neither inline nor staged
        json.dumps({**good, "stream": "other"}),  # for another stream
        json.dumps({**good, "batch_id": "a/b"}),  # not a batch id
    ]
    answers, state = entity.raw(
        "mixed", [("append", op) for op in operations] + [("append", json.dumps(good))]
    )
    assert all(a["problem"]["status"] >= 500 and a["retry"] is False for a in answers[:-1]), answers
    assert "position" in answers[-1], answers[-1]
    assert contents(entity.store, "mixed") == [("a", b"1")]
    assert json.loads(state)["appends"] == 1


def test_a_staged_batch_that_cannot_be_deleted_does_not_fail_its_append(entity, azurite):
    """Deleting a committed batch's staged copy is best effort (the container's lifecycle rule is
    the backstop): here a lease held on the blob makes the delete fail."""
    from azure.storage.blob import BlobServiceClient

    item = payload("kept", "kept-1", [Message("b", bytes(50_000))], staged_in=entity.staging)
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    blob = service.get_blob_client(entity.staging_container, item["staged"])
    lease = blob.acquire_lease(lease_duration=-1)
    try:
        answers, _ = entity("kept", [item])
        assert "position" in answers[0], answers
        assert contents(entity.store, "kept") == [("b", bytes(50_000))]
        assert blob.exists()  # left for the lifecycle rule
    finally:
        lease.release()


def test_the_entity_takes_the_stream_over_from_a_writer_elsewhere(entity):
    """Another process's entity writer (the previous owner, idle with its lease) does not make the
    new owner wait: it takes over, and the old writer is fenced."""
    old = entity.store.writer("moved", lease_seconds=60, takeover=True)
    old.append([Message("before", b"")], batch_id="before")
    answers, _ = entity("moved", [payload("moved", "after", [Message("after", b"")])])
    assert "position" in answers[0], answers
    with pytest.raises(vault_core.FencedError):
        old.append([Message("late", b"")])
    old.close()
    assert contents(entity.store, "moved") == [("before", b""), ("after", b"")]


@pytest.mark.parametrize(
    ("error", "retry"),
    [
        (vault_core.StreamBusyError("held"), True),
        (vault_core.FencedError("lost"), True),
        (HttpResponseError(response=None, message="server busy"), True),
        (ServiceRequestError("connection refused"), True),
        (vault_core.BatchIdConflict("reused"), False),
        (vault_core.MessageTooLarge("big"), False),
        (vault_core.CorruptDataError("s", 0, "flipped"), False),
    ],
)
def test_which_problems_the_orchestration_retries(error, retry):
    answer = entity_module.answer_for(error)
    assert answer["retry"] is retry
    assert (
        (answer["problem"]["status"] == 503 and answer["retry_after"])
        if retry
        else answer["problem"]["status"] < 503
    )


def test_a_post_parses_and_hashes_its_body_off_the_event_loop(azurite):
    """Parsing, encoding and hashing a 16 MiB body takes a while; on the worker's one event loop it
    would stall every other invocation on that instance. The worker logs the thread each call of
    the app's encoding step ran on."""
    container = f"app-{next(_containers)}"
    values = app_settings(
        azurite, container, STANDIN_TRACE_CALLS="vault_core.functions.http_handlers:_encode"
    )
    messages = [Message(f"k{i}", bytes([i % 256]) * 1200) for i in range(1_000)]
    with DurableHost(values, instances=1, settings=scaled(0.1)) as host:
        response = post(host, "off-loop", http.encode_json(messages), **{"Idempotency-Key": "off-loop-1"})
        assert response.status_code == 200, response.text
        traced = [
            line
            for line in (host.logs / f"{host.live('http')[0].name}.log").read_text().splitlines()
            if "traced vault_core.functions.http_handlers:_encode" in line
        ]
    assert len(traced) == 1 and "(main: False)" in traced[0], traced
    store = vault_core.open_store(azurite.connection_string, container=container)
    assert len(contents(store, "off-loop")) == len(messages)


def test_orchestrations_replay_while_an_entity_batch_is_slow(azurite):
    """For Python the extension runs entity batches and orchestrator replays side by side, and
    both once shared the worker's thread pool (here one thread, as on a one-core instance): an
    entity batch stuck on storage held every replay. The first append's batch takes 4 s here;
    another stream's append, started meanwhile, must not wait for it."""
    values = app_settings(
        azurite,
        f"app-{next(_containers)}",
        PYTHON_THREADPOOL_THREAD_COUNT="1",
        VAULT_WAIT_SECONDS="30",
        STANDIN_SLOW_CALLS="vault_core.functions.entity:_append_round=4*1",
    )
    finished: dict[str, float] = {}

    def publish(stream: str) -> None:
        response = post(host, stream, http.encode_json([Message("k", b"v")]), **{"Idempotency-Key": stream})
        assert response.status_code == 200, response.text
        finished[stream] = time.monotonic()

    with DurableHost(values, instances=1, settings=scaled(0.1)) as host:
        slow = threading.Thread(target=publish, args=("slow-batch",))
        slow.start()
        log = host.logs / f"{host.instances[0].name}.log"
        deadline = time.monotonic() + 30
        while "slowed vault_core.functions.entity:_append_round" not in log.read_text():
            assert time.monotonic() < deadline, "the entity never ran"
            time.sleep(0.05)
        started = time.monotonic()
        publish("meanwhile")
        slow.join(60)
    assert finished["meanwhile"] < finished["slow-batch"], "the other append waited for the slow batch"
    assert finished["meanwhile"] - started < 3


def test_a_client_whose_pending_append_was_purged_sends_it_again_and_it_lands_once(app):
    """The status location answers 404 once the runtime forgot the append (its history purged):
    the client sends the batch again under the same Idempotency-Key."""
    entity = protocol.entity_instance_id("stream_writer", "purged-pending")
    outcome: list = []
    with app.holding(entity):
        thread = threading.Thread(
            target=lambda: outcome.append(
                VaultClient(app.url, timeout=120).publish(
                    "purged-pending", [Message("k", b"v")], idempotency_key="pp-1"
                )
            )
        )
        thread.start()
        instance = instance_id("purged-pending", "pp-1")
        deadline = time.monotonic() + 30
        while app.record(instance) is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(3.5)  # past the POST's wait: the client polls the Location now
        app.hub.purge([instance])
        time.sleep(1)
    thread.join(60)
    assert outcome and contents(app.store, "purged-pending") == [("k", b"v")]
    assert outcome[0].offsets == [m.offset for m in app.store.reader("purged-pending").replay()]


def test_the_console_is_served_from_one_function_and_reads_through_the_api(app):
    page = httpx.get(f"{app.url}/console/")
    assert page.status_code == 200 and "Message Vault console" in page.text
    folder = httpx.get(f"{app.url}/console")  # the page names its files relative to the folder
    assert (folder.status_code, folder.headers["location"]) == (301, "/api/console/")
    script = httpx.get(f"{app.url}/console/console.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    vendored = httpx.get(f"{app.url}/console/vendor/crc32c.js")
    assert vendored.status_code == 200 and "CRC32C" in vendored.text
    assert httpx.get(f"{app.url}/console/../host.json").status_code == 404
    assert httpx.get(f"{app.url}/console/%2e%2e/%2e%2e/function_app.py").status_code == 404
    post(app, "console-orders", http.encode_json([Message("k", b"v")]), **{"Idempotency-Key": "console-1"})
    with app.store.checkpoints("billing") as checkpoints:
        checkpoints.save("console-orders", 0, expected=None)
    groups = httpx.get(f"{app.url}/groups").json()["groups"]
    lag = next(g for g in groups if g["group"] == "billing" and g["stream"] == "console-orders")
    assert lag["lag_bytes"] == app.store.reader("console-orders").position() > 0
    part = httpx.get(f"{app.url}/streams/console-orders/log", headers={"Range": "bytes=65536-65539"})
    assert (part.status_code, part.content) == (206, b"MVB\xff")


def test_the_entity_rolls_its_stream_into_sealed_segments_and_readers_read_them_all(app):
    batches = [[Message(f"event-{n}-{i}", bytes([n]) * 2000) for i in range(4)] for n in range(40)]
    for n, messages in enumerate(batches):
        response = post(app, "rolling", http.encode_json(messages), **{"Idempotency-Key": f"rolling-{n}"})
        assert response.status_code == 200, response.text
    deadline = time.monotonic() + 30  # the last roll's segment is sealed in the background
    segments = app.store.backend.segments("rolling")
    while not all(segment.sealed for segment in segments[:-1]):
        assert time.monotonic() < deadline, "a rolled segment was never sealed"
        time.sleep(0.1)
        segments = app.store.backend.segments("rolling")
    assert len(segments) >= 4
    expected = [(m.key, m.value) for messages in batches for m in messages]
    info = httpx.get(f"{app.url}/streams/rolling", timeout=30).json()
    assert info["segments"] == len(segments)
    with vault_core.open_reader(info["read_url"]) as reader:  # one read URL, every segment
        assert [(m.key, m.value) for m in reader.replay()] == expected
    again = post(app, "rolling", http.encode_json(batches[0]), **{"Idempotency-Key": "rolling-0"})
    assert again.status_code == 200 and app.store.reader("rolling").verify().batches == 40


def test_the_entity_keeps_to_the_stream_s_retention_policy_as_it_rolls(app):
    post(app, "kept", http.encode_json([Message("first", b"x")]), **{"Idempotency-Key": "kept-0"})
    app.store.set_retention("kept", vault_core.Retention(keep_bytes=2 * 65536))
    for n in range(1, 40):
        messages = [Message(f"event-{n}-{i}", bytes([n]) * 2000) for i in range(4)]
        response = post(app, "kept", http.encode_json(messages), **{"Idempotency-Key": f"kept-{n}"})
        assert response.status_code == 200, response.text
    reader = app.store.reader("kept")
    first, end = reader.first_position(), reader.position()
    assert first > 0 and 2 * 65536 <= end - first < 4 * 65536  # what the policy keeps, and a segment more
    info = httpx.get(f"{app.url}/streams/kept", timeout=30).json()
    assert info["first_position"] == first
    with vault_core.open_reader(info["read_url"]) as through_url:
        keys = [m.key for m in through_url.replay()]
    assert keys[-1] == "event-39-3" and "first" not in keys and len(keys) == len(set(keys))
