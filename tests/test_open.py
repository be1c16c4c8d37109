"""Choosing a store and a reader from what the caller gives."""

from __future__ import annotations

from pathlib import Path

import pytest

import vault_core
from vault_core.stores.blob import BlobStore
from vault_core.stores.local import LocalStore


def test_targets_choose_the_backend(tmp_path):
    assert isinstance(vault_core.open_store(tmp_path).backend, LocalStore)
    assert isinstance(vault_core.open_store(str(tmp_path)).backend, LocalStore)
    emulator = vault_core.open_store("UseDevelopmentStorage=true").backend
    assert isinstance(emulator, BlobStore) and emulator.container == "vault"
    events = vault_core.open_store("UseDevelopmentStorage=true", container="events").backend
    assert isinstance(events, BlobStore) and events.container == "events"


@pytest.mark.parametrize(
    ("target", "error", "says"),
    [
        ("", ValueError, "empty"),
        (3, TypeError, "path or a string"),
        (None, TypeError, "path or a string"),
    ],
)
def test_bad_targets(target, error, says):
    with pytest.raises(error, match=says):
        vault_core.open_store(target)


@pytest.mark.parametrize("container", ["ab", "Vault", "a--b", "-ab", "x" * 64])
def test_bad_container_names(container):
    with pytest.raises(ValueError, match="container name"):
        vault_core.open_store("UseDevelopmentStorage=true", container=container)


@pytest.mark.parametrize(
    ("url", "error", "says"),
    [
        ("ftp://host/s/log", ValueError, "unsupported read URL"),
        ("file:///tmp/s/data", ValueError, "not a stream read URL"),
        ("file:///tmp/Bad_Name/log", vault_core.InvalidStreamName, "invalid stream name"),
        (b"file:///tmp/s/log", TypeError, "must be a string"),
    ],
)
def test_bad_read_urls(url, error, says):
    with pytest.raises(error, match=says):
        vault_core.open_reader(url)


def test_a_local_read_url_names_the_stream(tmp_path):
    store = vault_core.open_store(tmp_path)
    url = store.read_url("orders")
    assert url.startswith("file://") and Path(url[len("file://") :]) == tmp_path.resolve() / "orders" / "log"
    reader = vault_core.open_reader(url)
    assert reader.stream == "orders" and reader.position() == 0


def test_memory_stores_are_private_unless_named_and_read_urls_work_in_this_process():
    first, second = vault_core.open_store("memory:"), vault_core.open_store("memory:")
    with first.writer("s") as writer:
        writer.append([vault_core.Message("k", b"v")])
    assert first.streams() == ["s"] and second.streams() == []
    named = vault_core.open_store("memory:shared-by-name")
    with named.writer("t") as writer:
        writer.append([vault_core.Message("k", b"named")])
    assert vault_core.open_store("memory:shared-by-name").streams() == ["t"]
    assert [m.value for m in vault_core.open_reader(first.read_url("s")).replay()] == [b"v"]
    assert [m.value for m in vault_core.open_reader(named.read_url("t")).replay()] == [b"named"]
    with pytest.raises(ValueError, match="no memory store 'elsewhere' in this process"):
        vault_core.open_reader("memory:elsewhere/s")
