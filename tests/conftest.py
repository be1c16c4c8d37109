from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

import vault_core
from tests.azurite import Azurite

_containers = itertools.count()


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    emulator = Azurite()
    yield emulator
    emulator.stop()


@pytest.fixture
def azurite_store(azurite: Azurite) -> Iterator[vault_core.Store]:
    """A blob store in a container of its own."""
    store = vault_core.open_store(azurite.connection_string, container=f"test-{next(_containers)}")
    yield store
    store.close()


@pytest.fixture
def local_store(tmp_path) -> vault_core.Store:
    return vault_core.open_store(tmp_path / "vault")


@pytest.fixture(params=["local", "azurite"])
def store(request) -> vault_core.Store:
    """Each store backend in turn: the conformance suite runs unchanged against both."""
    return request.getfixturevalue(f"{request.param}_store")
