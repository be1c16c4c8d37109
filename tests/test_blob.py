"""Page-blob specifics on Azurite: read URLs, and writes whose responses are lost on the way back."""

from __future__ import annotations

import pytest
from azure.core.exceptions import HttpResponseError, ServiceResponseError
from azure.storage.blob import BlobClient, BlobServiceClient

import vault_core
from tests.support.transports import LosingTransport
from vault_core import Message
from vault_core.stores.blob import BlobStore
from vault_core.stores.retries import blob_client_options


def test_read_url_is_read_only_and_for_one_stream(azurite_store):
    store = azurite_store
    for name in ("mine", "other"):
        with store.writer(name) as writer:
            writer.append([Message(name, b"secret of " + name.encode())])
    url = store.read_url("mine")
    assert [m.value for m in vault_core.open_reader(url).replay()] == [b"secret of mine"]
    blob = BlobClient.from_blob_url(url)
    with pytest.raises(HttpResponseError) as refused:
        blob.upload_page(bytes(512), offset=65536, length=512)
    assert refused.value.status_code == 403
    # Each stream lives in a container of its own: this URL's SAS opens none of another's blobs.
    other_blob = store.read_url("other").split("?", 1)[0]
    assert other_blob.rsplit("/", 3)[-3] != url.split("?", 1)[0].rsplit("/", 3)[-3]
    other = BlobClient.from_blob_url(other_blob + "?" + url.split("?", 1)[1])
    with pytest.raises(HttpResponseError) as denied:
        other.download_blob().readall()
    assert denied.value.status_code == 403
    assert vault_core.open_reader(url).position() == store.reader("mine").position()


def test_read_url_expires_as_asked(azurite_store):
    from datetime import timedelta
    from urllib.parse import parse_qs, urlparse

    with azurite_store.writer("s") as writer:
        writer.append([Message("k", b"v")])
    query = parse_qs(urlparse(azurite_store.read_url("s", expires_in=timedelta(minutes=5))).query)
    assert query["sp"] == ["rl"] and query["sr"] == ["c"]  # read and list its own container only
    start, expiry = (vault_core.format.datetime.fromisoformat(query[k][0]) for k in ("st", "se"))
    assert timedelta(minutes=9) < expiry - start <= timedelta(minutes=10)  # 5 min skew + 5 min


def test_open_store_accepts_a_path_style_account_url(azurite):
    from azure.core.credentials import AzureNamedKeyCredential

    from tests.support.azurite import ACCOUNT, KEY

    store = vault_core.open_store(
        f"{azurite.blob_endpoint}/url-style", credential=AzureNamedKeyCredential(ACCOUNT, KEY)
    )
    assert store.backend.container == "url-style"
    with store.writer("s") as writer:
        writer.append([Message("k", b"v")])
    assert [m.key for m in store.reader("s").replay()] == ["k"]


def is_commit(request) -> bool:
    """A commit is the page write at the start of a commit slot."""
    slots = {f"bytes={start}-" for start in vault_core.format.COMMIT_SLOTS}
    page_range = request.headers.get("x-ms-range", "")
    return request.method == "PUT" and "comp=page" in request.url and page_range.startswith(tuple(slots))


def store_losing(azurite, container: str, error: Exception) -> tuple[vault_core.Store, LosingTransport]:
    """A blob store whose next commit, once armed, lands and then fails with `error`."""
    transport = LosingTransport(error, is_commit)
    service = BlobServiceClient.from_connection_string(
        azurite.connection_string, transport=transport, **blob_client_options()
    )
    return vault_core.Store(BlobStore(service, container)), transport


def test_a_commit_retried_after_its_response_was_lost_counts_once(azurite):
    store, policy = store_losing(azurite, "lost-commit", ServiceResponseError("connection reset"))
    with store.writer("s") as writer:
        writer.append([Message("first", b"1")])
        policy.armed = True
        result = writer.append([Message("second", b"2")])
        assert writer.append([Message("third", b"3")]).position > result.position
    assert policy.lost == 1
    assert [m.key for m in store.reader("s").replay()] == ["first", "second", "third"]


def test_an_append_whose_outcome_is_unknown_is_safe_to_retry_with_its_batch_id(azurite):
    store, policy = store_losing(azurite, "unknown-outcome", RuntimeError("the process lost its socket"))
    with store.writer("s") as writer:
        policy.armed = True
        with pytest.raises(RuntimeError):
            writer.append([Message("order", b"42")], batch_id="order-42")
        # It did land; the retry says so instead of appending a second copy.
        retried = writer.append([Message("order", b"42")], batch_id="order-42")
        assert retried.position == writer.position
        writer.append([Message("next", b"43")])
    assert [m.key for m in store.reader("s").replay()] == ["order", "next"]
