"""Entra ID (token credential) access on an Azurite that serves HTTPS and checks bearer tokens: a
store opened by account URL with no account key, its user delegation read URLs, and consumers
reading with an identity of their own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlparse

import pytest
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.storage.blob import BlobClient, BlobSasPermissions, BlobServiceClient, generate_blob_sas

import vault_core
from tests.support.azurite import FakeEntraCredential
from vault_core import Message

STORAGE_SCOPE = ("https://storage.azure.com/.default",)


def write_streams(store: vault_core.Store, *names: str) -> None:
    for name in names:
        with store.writer(name) as writer:
            writer.append([Message(name, b"secret of " + name.encode())])


def blob_url(store: vault_core.Store, stream: str, endpoint: str) -> str:
    """The first segment's blob, in the stream's own container."""
    return f"{endpoint}/{store.backend.container}-{stream}/{stream}/log"


def assert_grants_reading_one_stream(url: str, store: vault_core.Store) -> None:
    """`url`, a SAS URL for stream "mine", reads it with no credential, writes nothing and grants
    nothing on stream "other"."""
    reader = vault_core.open_reader(url)
    assert reader.stream == "mine"
    assert [m.value for m in reader.replay()] == [b"secret of mine"]
    assert reader.position() == store.reader("mine").position()
    with pytest.raises(HttpResponseError) as refused:
        BlobClient.from_blob_url(url).upload_page(bytes(512), offset=65536, length=512)
    assert refused.value.status_code == 403
    with pytest.raises(HttpResponseError) as denied:
        other = f"{url.split('/mine/log?')[0].removesuffix('-mine')}-other/other/log?{url.split('?', 1)[1]}"
        BlobClient.from_blob_url(other).download_blob().readall()
    assert denied.value.status_code == 403


def test_a_store_opened_with_a_token_credential_writes_and_reads(entra_store, entra_credential):
    assert entra_store.backend.container.startswith("entra-")
    with entra_store.writer("orders") as writer:
        writer.append([Message("order-created", b"1")], batch_id="b1")
        writer.append([Message("order-paid", b"2"), Message("order-shipped", b"3")], batch_id="b2")
    assert entra_store.streams() == ["orders"]
    assert [(m.key, m.value) for m in entra_store.reader("orders").replay()] == [
        ("order-created", b"1"),
        ("order-paid", b"2"),
        ("order-shipped", b"3"),
    ]
    assert entra_credential.scopes and set(entra_credential.scopes) == {STORAGE_SCOPE}


@pytest.mark.parametrize(
    "credential",
    [
        FakeEntraCredential(audience="https://vault.azure.net"),
        FakeEntraCredential(lifetime=timedelta(minutes=-5)),
    ],
    ids=["other-audience", "expired"],
)
def test_the_emulator_refuses_tokens_it_must_refuse(trust_azurite_oauth, credential):
    """Proof that the tests above and below exercise token checks, not an open door."""
    store = vault_core.open_store(f"{trust_azurite_oauth.blob_endpoint}/refused", credential=credential)
    with pytest.raises(ClientAuthenticationError) as refused:
        store.writer("s")
    assert refused.value.status_code == 403
    store.close()


def test_read_url_without_an_account_key_is_a_read_only_user_delegation_sas(entra_store, entra_credential):
    write_streams(entra_store, "mine")
    query = parse_qs(urlparse(entra_store.read_url("mine", expires_in=timedelta(minutes=5))).query)
    assert query["sp"] == ["rl"] and query["sr"] == ["c"]  # its own container, read and list
    assert query["skoid"] == [entra_credential.object_id] and query["sktid"] == [entra_credential.tenant_id]
    start, expiry = (datetime.fromisoformat(query[k][0]) for k in ("st", "se"))
    assert timedelta(minutes=9) < expiry - start <= timedelta(minutes=10)  # 5 min skew + 5 min
    assert start < datetime.now(UTC) < expiry


def test_read_url_without_an_account_key_reads_its_stream_and_nothing_else(entra_store):
    write_streams(entra_store, "mine", "other")
    assert_grants_reading_one_stream(entra_store.read_url("mine"), entra_store)


def test_the_emulator_honours_a_user_delegation_sas_signed_for_the_account(
    entra_store, entra_credential, trust_azurite_oauth
):
    """The same kind of URL made by hand with the SDK alone, as a cross-check of read_url."""
    write_streams(entra_store, "mine", "other")
    now = datetime.now(UTC)
    start, expiry = now - timedelta(minutes=5), now + timedelta(hours=1)
    with BlobServiceClient(trust_azurite_oauth.blob_endpoint, credential=entra_credential) as service:
        key = service.get_user_delegation_key(start, expiry)
        assert (key.signed_oid, key.signed_tid) == (entra_credential.object_id, entra_credential.tenant_id)
        sas = generate_blob_sas(
            service.account_name,
            f"{entra_store.backend.container}-mine",
            "mine/log",
            permission=BlobSasPermissions(read=True),
            start=start,
            expiry=expiry,
            user_delegation_key=key,
        )
    assert_grants_reading_one_stream(
        f"{blob_url(entra_store, 'mine', trust_azurite_oauth.blob_endpoint)}?{sas}", entra_store
    )


def test_open_reader_reads_a_plain_blob_url_with_a_token_credential(entra_store, trust_azurite_oauth):
    write_streams(entra_store, "mine")
    url = blob_url(entra_store, "mine", trust_azurite_oauth.blob_endpoint)
    consumer = FakeEntraCredential()  # a consumer's own identity, not the producer's
    reader = vault_core.open_reader(url, credential=consumer)
    assert reader.stream == "mine"
    assert [m.value for m in reader.replay()] == [b"secret of mine"]
    with entra_store.writer("mine") as writer:
        writer.append([Message("k", b"later")])
    assert reader.position() == entra_store.reader("mine").position()
    assert [m.value for m in reader.replay()] == [b"secret of mine", b"later"]
    assert consumer.scopes and set(consumer.scopes) == {STORAGE_SCOPE}
    reader.close()
    with pytest.raises(ValueError, match="no SAS token"):
        vault_core.open_reader(url)
