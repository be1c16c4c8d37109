from __future__ import annotations

import importlib.util
import itertools
import os
from collections.abc import Iterator

import pytest

import vault_core
from tests.support import telemetry
from tests.support.azurite import Azurite, FakeEntraCredential

telemetry.install()  # the vault's metrics, recorded in this process and read by the tests

_containers = itertools.count()

# The Function App's suites run where its runtime is: Python 3.13 with Microsoft's worker library
# (.venv-functions; scripts/test.sh runs them there). Everything else runs on Python 3.11 and later.
collect_ignore = [] if importlib.util.find_spec("azure_functions_runtime") else ["function_app"]


@pytest.fixture(scope="session", autouse=True)
def _state_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """What the commands under test keep in the user's state folder (`vault publish --url`'s
    progress records) goes to a folder of the test session's, not the home folder."""
    previous = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state"))
    yield
    if previous is None:
        del os.environ["XDG_STATE_HOME"]
    else:
        os.environ["XDG_STATE_HOME"] = previous


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


@pytest.fixture(scope="session")
def azurite_oauth() -> Iterator[Azurite]:
    """A second Azurite, over HTTPS with a self-signed certificate, that accepts Entra ID bearer
    tokens (`--oauth basic`) besides the account key."""
    emulator = Azurite(oauth=True)
    yield emulator
    emulator.stop()


@pytest.fixture
def trust_azurite_oauth(azurite_oauth: Azurite, monkeypatch: pytest.MonkeyPatch) -> Azurite:
    """azurite_oauth, its certificate trusted by the Azure SDK for this test. vault_core takes no
    `connection_verify`, so through REQUESTS_CA_BUNDLE, which requests reads on every request."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(azurite_oauth.ca_path))
    return azurite_oauth


@pytest.fixture
def entra_credential() -> FakeEntraCredential:
    """An Entra ID identity of its own (object and tenant ids) whose tokens azurite_oauth accepts."""
    return FakeEntraCredential()


@pytest.fixture
def entra_store(
    trust_azurite_oauth: Azurite, entra_credential: FakeEntraCredential
) -> Iterator[vault_core.Store]:
    """A blob store opened by account URL with entra_credential (no account key), in a container
    of its own on azurite_oauth."""
    url = f"{trust_azurite_oauth.blob_endpoint}/entra-{next(_containers)}"
    store = vault_core.open_store(url, credential=entra_credential)
    yield store
    store.close()


@pytest.fixture
def local_store(tmp_path) -> vault_core.Store:
    return vault_core.open_store(tmp_path / "vault")


@pytest.fixture
def memory_store() -> vault_core.Store:
    """A store in this process's memory, of its own."""
    return vault_core.open_store("memory:")


@pytest.fixture(params=["local", "azurite"])
def store(request) -> vault_core.Store:
    """Each store backend in turn: the conformance suite runs unchanged against both."""
    return request.getfixturevalue(f"{request.param}_store")
