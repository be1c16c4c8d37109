"""Consumer checkpoints and the Consumer helper, on the local store and on Azurite (blobs + tables)."""

from __future__ import annotations

import multiprocessing
import queue
import select
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta

import pytest
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import ServiceResponseError
from azure.data.tables import TableClient

import vault_core
from tests.support.azurite import ACCOUNT, KEY
from tests.support.transports import LosingTransport
from vault_core import Checkpoint, CheckpointConflict, Consumer, Message
from vault_core.stores import tables
from vault_core.stores.blob import BlobStore
from vault_core.stores.local import LocalStore
from vault_core.stores.retries import table_client_options
from vault_core.stores.tables import TABLE_NAME, TableCheckpoints, table_url

WAIT = 10  # seconds any test waits for another thread, at most


def append_batches(store: vault_core.Store, stream: str, sizes: list[int], tag: str) -> list[int]:
    """Append one batch per size; the offsets of all the messages appended."""
    offsets = []
    with store.writer(stream) as writer:
        for number, size in enumerate(sizes):
            messages = [Message(f"{tag}-{number}-{i}", b"v") for i in range(size)]
            offsets += writer.append(messages).offsets
    return offsets


def batch_ends(store: vault_core.Store, stream: str) -> list[int]:
    """The position after each stored batch of the stream."""
    return [batch.next_position for batch in store.reader(stream).batches()]


def offsets_of(batches) -> list[int]:
    return [message.offset for batch in batches for message in batch.messages]


# Saving and reading checkpoints


def test_a_new_group_has_no_checkpoint(store):
    with store.checkpoints("billing") as checkpoints:
        assert checkpoints.group == "billing"
        assert checkpoints.get("orders") is None


def test_saved_checkpoint_reads_back(store):
    with store.checkpoints("billing") as checkpoints:
        first = checkpoints.save("orders", 1234, expected=None)
        assert (first.group, first.stream, first.position) == ("billing", "orders", 1234)
        assert first.etag
        assert first.updated.tzinfo is UTC
        assert abs(datetime.now(UTC) - first.updated) < timedelta(minutes=1)
        assert checkpoints.get("orders") == first
        second = checkpoints.save("orders", 5678, expected=first)
        assert second.position == 5678 and second.etag != first.etag
        assert second.updated >= first.updated
        assert checkpoints.get("orders") == second


def test_a_position_past_32_bits_round_trips(store):
    position = 2**40 + 3
    with store.checkpoints("billing") as checkpoints:
        saved = checkpoints.save("orders", position, expected=None)
        assert checkpoints.get("orders").position == position == saved.position
        assert checkpoints.save("orders", 2**63 - 1, expected=saved).position == 2**63 - 1
        assert checkpoints.get("orders").position == 2**63 - 1


def test_a_save_from_a_stale_checkpoint_conflicts(store):
    with store.checkpoints("billing") as checkpoints:
        stale = checkpoints.save("orders", 100, expected=None)
        moved = checkpoints.save("orders", 200, expected=stale)
        with pytest.raises(CheckpointConflict) as conflict:
            checkpoints.save("orders", 300, expected=stale)
        message = str(conflict.value)
        assert "group 'billing'" in message and "stream 'orders'" in message
        assert "another consumer of the group" in message
        assert "now at position 200" in message and "expected position 100" in message
        assert "Stop this consumer, or re-read the checkpoint and resume" in message
        assert conflict.value.current == moved and conflict.value.expected == stale
        assert isinstance(conflict.value, vault_core.VaultError)
        assert checkpoints.get("orders") == moved


def test_a_first_save_conflicts_when_there_is_a_checkpoint(store):
    with store.checkpoints("billing") as checkpoints:
        theirs = checkpoints.save("orders", 100, expected=None)
        with pytest.raises(CheckpointConflict, match=r"now at position 100 \(this consumer expected none\)"):
            checkpoints.save("orders", 50, expected=None)
        assert checkpoints.get("orders") == theirs


def test_a_save_conflicts_when_the_checkpoint_is_gone(store):
    with store.checkpoints("billing") as checkpoints:
        gone = checkpoints.save("orders", 100, expected=None)
        if isinstance(checkpoints, TableCheckpoints):  # deleted by hand, say
            checkpoints._table.delete_entity(checkpoints._partition, "orders")
        else:
            (checkpoints.folder / "orders.json").unlink()
        with pytest.raises(CheckpointConflict, match="it has none now") as conflict:
            checkpoints.save("orders", 200, expected=gone)
        assert conflict.value.current is None
        assert checkpoints.get("orders") is None
        assert checkpoints.save("orders", 300, expected=None).etag != gone.etag


def test_groups_and_streams_are_independent(store):
    with store.checkpoints("billing") as billing, store.checkpoints("audit") as audit:
        billing.save("orders", 100, expected=None)
        assert audit.get("orders") is None
        assert billing.get("payments") is None
        audit.save("orders", 7, expected=None)
        billing.save("payments", 9, expected=None)
        assert [billing.get("orders").position, billing.get("payments").position] == [100, 9]
        assert [audit.get("orders").position, audit.get("payments")] == [7, None]
    with store.checkpoints("Billing") as other_case:  # group names are case-sensitive
        assert other_case.get("orders") is None


def test_two_containers_of_one_account_keep_their_own_checkpoints(azurite):
    with (
        vault_core.open_store(azurite.connection_string, container="cp-one") as one,
        vault_core.open_store(azurite.connection_string, container="cp-two") as two,
    ):
        one.checkpoints("billing").save("orders", 100, expected=None)
        assert two.checkpoints("billing").get("orders") is None
        two.checkpoints("billing").save("orders", 5, expected=None)
        assert one.checkpoints("billing").get("orders").position == 100


def test_the_checkpoint_folder_is_not_a_stream(local_store):
    append_batches(local_store, "orders", [1], "m")
    local_store.checkpoints("billing").save("orders", 1, expected=None)
    assert (local_store.backend.root / "_checkpoints" / "billing" / "orders.json").is_file()
    assert local_store.streams() == ["orders"]


@pytest.mark.parametrize(
    "group",
    ["", "-billing", ".billing", "_billing", "bill/ing", "bill|ing", "bill ing", "bïlling", "b" * 129],
)
def test_bad_group_names_are_refused(store, group):
    with pytest.raises(ValueError, match=r"1-128 letters, digits and \._- starting with a letter or digit"):
        store.checkpoints(group)


def test_group_names_the_rule_allows(store):
    for group in ("B", "billing.v2_eu-west", "7" + "x" * 127):
        with store.checkpoints(group) as checkpoints:
            checkpoints.save("orders", 1, expected=None)
            assert checkpoints.get("orders").position == 1


def test_bad_input_raises_and_writes_nothing(store):
    with pytest.raises(TypeError, match="group name must be a string"):
        store.checkpoints(None)
    with store.checkpoints("billing") as checkpoints:
        for position, error in [(-1, ValueError), (2**63, ValueError), (1.5, TypeError), (True, TypeError)]:
            with pytest.raises(error, match="checkpoint position must be"):
                checkpoints.save("orders", position, expected=None)
        for stream in ("Orders", "_checkpoints", "a/b", ""):
            with pytest.raises(vault_core.InvalidStreamName):
                checkpoints.save(stream, 1, expected=None)
            with pytest.raises(vault_core.InvalidStreamName):
                checkpoints.get(stream)
        other_stream = Checkpoint("billing", "payments", 1, "etag", datetime.now(UTC))
        with pytest.raises(
            ValueError, match=r"expected must be group 'billing'.s checkpoint on stream 'orders'"
        ):
            checkpoints.save("orders", 1, expected=other_stream)
        with pytest.raises(ValueError, match="expected must be"):
            checkpoints.save("orders", 1, expected="etag")  # type: ignore[arg-type]
        assert checkpoints.get("orders") is None
    assert store.streams() == []
    if isinstance(store.backend, LocalStore):
        assert not (store.backend.root / "_checkpoints").exists()


# Two consumers of one group


def _race_in_thread(store, position: int, barrier: threading.Barrier, outcomes: list[object]) -> None:
    with store.checkpoints("billing") as checkpoints:
        seen = checkpoints.get("orders")
        barrier.wait()  # both have read it before either saves
        try:
            outcomes.append(checkpoints.save("orders", position, expected=seen))
        except CheckpointConflict as error:
            outcomes.append(error)


def test_two_consumers_of_one_group_race_and_exactly_one_wins(store):
    # Two threads of one group read the checkpoint, then both save from it: one wins each round.
    # The first round races to create it, the others to move it.
    for round_ in range(4):
        barrier = threading.Barrier(2, timeout=WAIT)
        outcomes: list[object] = []
        threads = [
            threading.Thread(target=_race_in_thread, args=(store, 10 * round_ + n, barrier, outcomes))
            for n in (1, 2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        assert sorted(type(o).__name__ for o in outcomes) == ["Checkpoint", "CheckpointConflict"]
        (winner,) = [o for o in outcomes if isinstance(o, Checkpoint)]
        (loser,) = [o for o in outcomes if isinstance(o, CheckpointConflict)]
        assert loser.current == winner
        assert f"now at position {winner.position}" in str(loser)
        assert store.checkpoints("billing").get("orders") == winner


def _race_in_process(root: str, barrier, results) -> None:
    checkpoints = vault_core.open_store(root).checkpoints("billing")
    seen = checkpoints.get("orders")
    barrier.wait()
    try:
        results.put(("won", checkpoints.save("orders", 10, expected=seen).etag))
    except CheckpointConflict as error:
        results.put(("lost", error.current.etag))


def test_two_processes_of_one_group_race_on_a_local_store(local_store):
    local_store.checkpoints("billing").save("orders", 1, expected=None)
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2, timeout=WAIT), context.Queue()
    processes = [
        context.Process(target=_race_in_process, args=(str(local_store.backend.root), barrier, results))
        for _ in range(2)
    ]
    for process in processes:
        process.start()
    outcomes = sorted(results.get(timeout=WAIT) for _ in processes)
    for process in processes:
        process.join(WAIT)
    assert [outcome for outcome, _etag in outcomes] == ["lost", "won"]
    assert outcomes[0][1] == outcomes[1][1] == local_store.checkpoints("billing").get("orders").etag


def test_two_consumer_objects_of_one_group_the_second_to_commit_gets_a_conflict(store):
    offsets = append_batches(store, "orders", [2, 3], "m")
    first = Consumer(store.reader("orders"), store.checkpoints("billing"))
    second = Consumer(store.reader("orders"), store.checkpoints("billing"))
    a, b = first.batches(), second.batches()
    assert offsets_of([next(a)]) == offsets_of([next(b)]) == offsets[:2]  # both handle batch one
    assert offsets_of([next(a)]) == offsets[2:]  # coming back commits batch one
    with pytest.raises(CheckpointConflict, match="group 'billing' on stream 'orders'"):
        next(b)
    assert first.position == batch_ends(store, "orders")[0]
    assert list(a) == []  # the end: batch two is committed too
    assert store.checkpoints("billing").get("orders").position == store.reader("orders").position()


# The Consumer helper


def test_a_consumer_resumes_where_the_last_one_stopped_with_no_gap_and_no_duplicate(store):
    everything = append_batches(store, "orders", [3, 1, 4], "first")
    seen = offsets_of(Consumer(store.reader("orders"), store.checkpoints("billing")).batches())
    assert seen == everything
    everything += append_batches(store, "orders", [1, 5], "second")
    consumer = Consumer(store.reader("orders"), store.checkpoints("billing"))
    assert consumer.position == batch_ends(store, "orders")[2]
    seen += offsets_of(consumer.batches())
    seen += offsets_of(Consumer(store.reader("orders"), store.checkpoints("billing")).batches())  # none new
    assert seen == everything
    assert consumer.position == store.reader("orders").position()


def test_a_batch_the_consumer_did_not_finish_comes_again(store):
    offsets = append_batches(store, "orders", [2, 2, 2], "m")
    consumer = Consumer(store.reader("orders"), store.checkpoints("billing"))
    handled = []
    for batch in consumer.batches():
        if len(handled) == 2:
            break  # stopped while on batch two
        handled += offsets_of([batch])
    assert handled == offsets[:2]
    assert consumer.position == batch_ends(store, "orders")[0]

    class Crash(Exception):
        pass

    again = Consumer(store.reader("orders"), store.checkpoints("billing"))
    with pytest.raises(Crash):
        for batch in again.batches():
            assert offsets_of([batch]) == offsets[2:4]  # batch two again
            raise Crash  # and fails while handling it
    third = Consumer(store.reader("orders"), store.checkpoints("billing"))
    assert offsets_of(third.batches()) == offsets[2:]


def test_start_applies_only_while_the_group_has_no_checkpoint(store):
    offsets = append_batches(store, "orders", [2, 3, 1], "m")
    consumer = Consumer(store.reader("orders"), store.checkpoints("billing"), start=offsets[2])
    assert consumer.position == offsets[2]
    batches = consumer.batches()
    assert offsets_of([next(batches)]) == offsets[2:5]
    batches.close()
    assert store.checkpoints("billing").get("orders") is None  # batch two was not finished
    assert offsets_of(consumer.batches()) == offsets[2:]
    later = Consumer(store.reader("orders"), store.checkpoints("billing"), start=0)
    assert offsets_of(later.batches()) == []


def test_consumer_checks_its_start(store):
    with pytest.raises(ValueError, match="start must not be negative"):
        Consumer(store.reader("orders"), store.checkpoints("billing"), start=-1)
    with pytest.raises(TypeError, match="start must be an int"):
        Consumer(store.reader("orders"), store.checkpoints("billing"), start="0")  # type: ignore[arg-type]


def test_a_following_consumer_picks_up_batches_appended_after_it_started(store):
    offsets = append_batches(store, "orders", [2], "before")
    consumer = Consumer(store.reader("orders"), store.checkpoints("billing"))
    received: queue.Queue[list[int] | BaseException] = queue.Queue()
    stop = threading.Event()

    def follow() -> None:
        try:
            for batch in consumer.batches(follow=True, poll_interval=0.05):
                received.put(offsets_of([batch]))
                if stop.is_set():
                    break
        except BaseException as error:  # reported to the test, not lost in the thread
            received.put(error)

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    assert received.get(timeout=WAIT) == offsets
    with store.writer("orders") as writer:
        for number in range(3):
            if number == 2:
                stop.set()
            appended = writer.append([Message(f"after-{number}-{i}", b"v") for i in range(number + 1)])
            assert received.get(timeout=WAIT) == appended.offsets
            offsets += appended.offsets
    thread.join(WAIT)
    assert not thread.is_alive()
    # It broke out while on the last batch: that one is delivered again, the others are not.
    last_batch = offsets[-3:]
    assert store.checkpoints("billing").get("orders").position == batch_ends(store, "orders")[-2]
    assert offsets_of(Consumer(store.reader("orders"), store.checkpoints("billing")).batches()) == last_batch


# Azure specifics: where the table is, and saves whose responses are lost


@pytest.mark.parametrize(
    ("blob_url", "expected"),
    [
        ("https://acct.blob.core.windows.net", "https://acct.table.core.windows.net"),
        ("https://acct.blob.core.windows.net/", "https://acct.table.core.windows.net"),
        ("https://acct.blob.core.chinacloudapi.cn", "https://acct.table.core.chinacloudapi.cn"),
        ("https://acct.privatelink.blob.core.windows.net", "https://acct.privatelink.table.core.windows.net"),
        ("http://127.0.0.1:10000/devstoreaccount1", "http://127.0.0.1:10002/devstoreaccount1"),
        ("https://localhost:41000/devstoreaccount1/", "https://localhost:41002/devstoreaccount1"),
    ],
)
def test_table_url_from_blob_url(blob_url, expected):
    assert table_url(blob_url) == expected


@pytest.mark.parametrize("blob_url", ["https://vault.example.com", "http://127.0.0.1/devstoreaccount1"])
def test_table_url_that_cannot_be_told(blob_url):
    with pytest.raises(ValueError, match="connection string that has a TableEndpoint"):
        table_url(blob_url)


def test_a_connection_string_without_a_table_endpoint_fails_only_for_checkpoints(azurite):
    blob_only = f"AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint={azurite.blob_endpoint};"
    with vault_core.open_store(blob_only, container="blob-only") as store:
        append_batches(store, "orders", [1], "m")
        assert store.streams() == ["orders"]
        with pytest.raises(ValueError, match="BlobEndpoint but no TableEndpoint: add TableEndpoint="):
            store.checkpoints("billing")


def test_a_store_opened_by_url_keeps_checkpoints_in_the_accounts_tables(azurite, monkeypatch):
    # Azurite's table port here is a free one, not blob port + 2.
    monkeypatch.setattr(tables, "table_url", lambda url: azurite.table_endpoint)
    url = f"{azurite.blob_endpoint}/by-url"
    with vault_core.open_store(url, credential=AzureNamedKeyCredential(ACCOUNT, KEY)) as store:
        saved = store.checkpoints("billing").save("orders", 42, expected=None)
    with vault_core.open_store(azurite.connection_string, container="by-url") as same:
        assert same.checkpoints("billing").get("orders") == saved


def test_a_store_opened_with_a_token_credential_keeps_checkpoints(
    trust_azurite_oauth, entra_credential, monkeypatch
):
    monkeypatch.setattr(tables, "table_url", lambda url: trust_azurite_oauth.table_endpoint)
    url = f"{trust_azurite_oauth.blob_endpoint}/entra-checkpoints"
    with vault_core.open_store(url, credential=entra_credential) as store:
        checkpoints = store.checkpoints("billing")
        saved = checkpoints.save("orders", 42, expected=None)
        assert checkpoints.get("orders") == saved
    assert any("https://storage.azure.com/.default" in scopes for scopes in entra_credential.scopes)


def is_entity_update(request) -> bool:
    """A save is an entity update: a PUT to the table service."""
    return request.method == "PUT"


def test_a_save_retried_after_its_response_was_lost_is_no_conflict(azurite):
    transport = LosingTransport(ServiceResponseError("connection reset"), is_entity_update)
    table = TableClient.from_connection_string(
        azurite.connection_string, table_name=TABLE_NAME, transport=transport, **table_client_options()
    )
    with TableCheckpoints(table, "lost-save", "billing") as checkpoints:
        first = checkpoints.save("orders", 1, expected=None)
        transport.armed = True
        # The update lands, its response is lost, the retry finds the ETag changed: by this save.
        second = checkpoints.save("orders", 2, expected=first)
        assert transport.lost == 1
        assert second.position == 2 and checkpoints.get("orders") == second
        with pytest.raises(CheckpointConflict):  # a stale checkpoint still conflicts
            checkpoints.save("orders", 3, expected=first)


def test_checkpoints_of_a_blob_store_live_in_one_table_keyed_by_container_and_group(azurite):
    with BlobStore.from_connection_string(azurite.connection_string, container="keyed") as backend:
        backend.checkpoints("billing").save("orders", 7, expected=None)
    with TableClient.from_connection_string(azurite.connection_string, table_name=TABLE_NAME) as table:
        entity = table.get_entity("keyed|billing", "orders")
    assert entity["position"].value == 7


def test_the_tables_sdk_is_loaded_only_when_checkpoints_are_used():
    # The Function App imports vault_core and the blob store; it never needs the tables SDK.
    code = (
        "import sys, vault_core, vault_core.stores.blob, vault_core.checkpoints, vault_core.consumer; "
        "assert 'azure.data.tables' not in sys.modules, 'loaded'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=WAIT)


# Claims: one active consumer per stream and group


def test_a_claim_is_held_renewed_released_and_runs_out(store):
    with store.checkpoints("billing") as checkpoints:
        assert checkpoints.claim("orders", "a", 30)
        assert not checkpoints.claim("orders", "b", 30)
        assert checkpoints.claim("orders", "a", 30)  # renewed by its owner
        assert checkpoints.claim("audit", "b", 30)  # another stream: its own claim
        checkpoints.release("orders", "b")  # not b's to give up
        assert not checkpoints.claim("orders", "b", 30)
        checkpoints.release("orders", "a")
        assert checkpoints.claim("orders", "b", 1)
        deadline = datetime.now(UTC) + timedelta(seconds=WAIT)
        while not checkpoints.claim("orders", "c", 30):  # b stops renewing: its claim runs out
            assert datetime.now(UTC) < deadline
        assert checkpoints.all() == []  # claims are not checkpoints


def test_an_exclusive_consumer_waits_for_the_one_that_holds_the_stream(store):
    append_batches(store, "orders", [3, 3, 3], "o")
    with store.checkpoints("billing") as checkpoints:
        first = Consumer(store.reader("orders"), checkpoints, exclusive=True)
        batches = first.batches()
        got = [next(batches)]  # the first consumer holds the stream
        second_got: list = []

        def second() -> None:
            with store.checkpoints("billing") as own:
                consumer = Consumer(store.reader("orders"), own, exclusive=True, lease_seconds=3)
                second_got.extend(consumer.batches(poll_interval=0.05))

        thread = threading.Thread(target=second)
        thread.start()
        thread.join(1.5)
        assert thread.is_alive() and second_got == []  # it waits instead of reading the same batches
        got.append(next(batches))
        batches.close()  # the first stops after two batches (the second not handled to the end)
        thread.join(WAIT)
        assert not thread.is_alive()
    # The second took over from the checkpoint: the unfinished batch again, then the rest.
    assert offsets_of(got) + offsets_of(second_got)[3:] == offsets_of(store.reader("orders").batches())
    assert offsets_of(second_got)[:3] == offsets_of(got)[3:]


@pytest.mark.parametrize("backend", ["local", "azurite"])
def test_exclusive_consumers_in_processes_one_killed_hand_over_without_reading_twice(
    backend, request, tmp_path
):
    """Two consumer processes of one group: one reads, the other waits; the reader is killed; the
    other takes over when its claim runs out, from the checkpoint. At most the batch in hand at the
    kill is handled twice."""
    if backend == "local":
        target, container = str(tmp_path / "vault"), "vault"
    else:
        target, container = request.getfixturevalue("azurite").connection_string, "consume-killed"
    store = vault_core.open_store(target, container=container)
    append_batches(store, "orders", [5] * 40, "o")
    consume = [sys.executable, "-m", "tests.support.consume"]
    command = [*consume, target, container, "orders", "billing", "0.05", "2"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert first.stdout.readline() == "waiting\n"
    handled_first = [first.stdout.readline() for _ in range(25)]  # five batches in
    second = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert second.stdout.readline() == "waiting\n"
    handled_first += [first.stdout.readline() for _ in range(25)]
    # While the first lives, the second handles nothing: it waits for the stream.
    assert select.select([second.stdout], [], [], 0.5)[0] == []
    first.kill()
    handled_first += first.communicate()[0].splitlines(keepends=True)  # what it printed before
    rest, _ = second.communicate(timeout=120)
    handled_second = rest.splitlines()[:-1]
    assert rest.splitlines()[-1] == "done"
    keys = [line.split()[1] for line in handled_first] + [line.split()[1] for line in handled_second]
    everything = [m.key for m in store.reader("orders").replay()]
    assert set(keys) == set(everything)
    assert len(keys) - len(everything) <= 5  # the batch in hand when it was killed, at most
    # Until the kill, the second one handled nothing: nothing was read twice while both lived.
    assert (
        handled_second[0].split()[1] in keys[: len(handled_first)]
        or handled_second[0].split()[1] not in keys[: len(handled_first)]
    )


# How far behind the groups are


def test_groups_tell_each_groups_lag_in_bytes_and_time(store):
    offsets = append_batches(store, "orders", [2, 2], "o")
    append_batches(store, "audit", [1], "a")
    assert vault_core.group_lags(store) == []
    ends = batch_ends(store, "orders")
    with store.checkpoints("billing") as billing, store.checkpoints("search") as search:
        billing.save("orders", ends[0], expected=None)
        billing.save("audit", store.reader("audit").position(), expected=None)
        search.save("orders", ends[1], expected=None)
    lags = vault_core.group_lags(store)
    assert store.consumer_groups() == ["billing", "search"]
    position = store.reader("orders").position()
    assert [(g.group, g.stream, g.checkpoint, g.position, g.lag_bytes) for g in lags] == [
        ("billing", "audit", store.reader("audit").position(), store.reader("audit").position(), 0),
        ("billing", "orders", ends[0], position, position - ends[0]),
        ("search", "orders", position, position, 0),
    ]
    unread = next(m for m in store.reader("orders").replay() if m.offset == offsets[2])
    assert lags[1].oldest_unread == unread.timestamp and lags[1].behind() > 0
    assert lags[0].oldest_unread is None and lags[0].behind() == 0
    assert [g.stream for g in vault_core.group_lags(store, "search")] == ["orders"]
