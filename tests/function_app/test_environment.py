"""The Function App's environment, as it deploys: Python 3.13 with requirements.txt's versions; the
app indexed and run by Microsoft's worker library and nothing else; its layout (no development
server) and its OpenAPI document, listing exactly the HTTP functions the library indexed."""

from __future__ import annotations

import ast
import inspect
import json
import os
import subprocess
import sys

import azure_functions_runtime
import httpx
import pytest

from tests.support import ROOT
from tests.support.durable import worker
from tests.support.durable.channel import WorkerChannel
from tests.support.durable.host import DurableHost
from tests.support.served import Served
from tests.test_layout import modules_after
from vault_core import http_models as http
from vault_core import openapi, routes

API_KEY = "a-key"


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """The app's functions as the worker library indexes them, in a worker of their own."""
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    env = {**os.environ, "FUNCTIONS_WORKER_RUNTIME": "python", "VAULT_TASK_HUB": "vault"}
    with open(log, "ab") as output:
        channel = WorkerChannel(env, output, "indexing")
        try:
            yield channel.functions
        finally:
            channel.kill()


def test_the_app_runs_on_python_3_13():
    assert sys.version_info[:2] == (3, 13)


def test_the_stand_in_reaches_the_app_only_through_the_worker_library():
    """The host stand-in never imports the app, nor calls its functions or their handles itself:
    its workers hand every request to the library's handlers, as Azure's Python worker does."""
    folder = ROOT / "tests" / "support" / "durable"
    for module in folder.glob("*.py"):
        tree = ast.parse(module.read_text())
        imported = {
            alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
        } | {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        app = [name for name in imported if name == "function_app" or name.startswith("vault_core.functions")]
        assert not app, module.name
        called = {
            node.func.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        }
        assert not {"get_functions", "get_user_function", "get_raw_bindings"} & called, module.name
    for _answer, handler in worker.HANDLERS.values():
        assert inspect.getmodule(handler).__name__.startswith("azure_functions_runtime"), handler


def test_the_worker_library_indexed_every_function_of_the_app(indexed):
    assert set(indexed) == {
        "publish",
        "batch_status",
        "stream_info",
        "list_streams",
        "stream_log",
        "list_groups",
        "console",
        "health",
        "openapi",
        "append_batch",
        "stream_writer",
        "purge_history",
    }
    assert azure_functions_runtime.__file__.startswith(sys.prefix)  # the locked library, not a copy


def test_the_function_app_does_not_load_the_development_server():
    loaded = modules_after("import function_app")
    assert {"vault_core.functions.http_handlers", "vault_core.functions.entity"} <= set(loaded)
    assert not [m for m in loaded if m.startswith(("vault_core.server", "starlette", "uvicorn"))]


def test_the_document_lists_exactly_the_function_apps_http_functions_keyed_as_they_are(indexed):
    triggers = [b for function in indexed.values() for b in function.bindings if b["type"] == "httpTrigger"]
    functions = {  # a catch-all {*name} is the path parameter {name}
        (f"{routes.API_PREFIX}/{t['route'].replace('{*', '{')}", method.lower()): t["authLevel"]
        for t in triggers
        for method in t["methods"]
    }
    document = openapi.document()
    operations = {
        (path, method): operation.get("security", document["security"])
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method != "parameters"
    }
    assert set(operations) == set(functions)
    for route, auth_level in functions.items():
        assert (operations[route] == []) == (auth_level == "ANONYMOUS"), route


def test_both_hosts_serve_the_same_document_without_a_key(tmp_path):
    served = Served(str(tmp_path / "vault"), "vault", "--api-key", API_KEY)
    try:
        assert httpx.get(f"{served.url}/api/streams").status_code == 401
        from_serve = httpx.get(f"{served.url}/api/openapi.json")
    finally:
        served.stop()
    with DurableHost({"VAULT_TASK_HUB": "vault"}, instances=1, function_key=API_KEY) as app:
        assert httpx.get(f"{app.url}/streams", timeout=30).status_code == 401
        from_function_app = httpx.get(f"{app.url}/openapi.json", timeout=30)
    for response in (from_serve, from_function_app):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(http.JSON)
        assert response.json() == openapi.document()


def test_the_functions_environment_the_readme_makes_indexes_the_app(tmp_path):
    """`scripts/bootstrap.sh functions`, then the app as the Functions host's Python worker loads it."""
    subprocess.run([str(ROOT / "scripts" / "bootstrap.sh"), "functions"], cwd=ROOT, check=True, timeout=600)
    python = ROOT / ".venv-functions" / "bin" / "python"
    script = (
        "import json, sys\n"
        "sys.path.insert(0, '.')\n"
        "from tests.support.durable.channel import WorkerChannel\n"
        "channel = WorkerChannel(dict(__import__('os').environ), sys.stderr.buffer, 'readme')\n"
        "print(json.dumps(sorted(channel.functions)))\n"
        "channel.kill()\n"
    )
    listed = subprocess.run(
        [str(python), "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert listed.returncode == 0, listed.stderr
    names = json.loads(listed.stdout)
    assert "publish" in names and "stream_writer" in names


def locked() -> dict[str, str]:
    """requirements.txt as {normalized name: version}; every line must be an exact pin."""
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, separator, version = line.partition("==")
            assert separator and version.strip(), f"not an exact pin: {line!r}"
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_the_lock_pins_every_dependency_the_app_declares():
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = locked()
    for text in [*project["dependencies"], *project["optional-dependencies"]["functions"]]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is declared but not locked: run scripts/lock.sh"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} breaks {text!r}"


def test_the_lock_holds_nothing_the_app_does_not_need():
    """Every locked package is a declared dependency of the app or something one of them needs:
    a dependency dropped from pyproject.toml leaves the lock too (run scripts/lock.sh)."""
    import tomllib
    from importlib.metadata import distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["functions"]]
    needed: set[str] = set()
    while wanted:
        requirement = Requirement(wanted.pop())
        name = canonicalize_name(requirement.name)
        if name in needed or (
            requirement.marker is not None and not requirement.marker.evaluate({"extra": ""})
        ):
            continue
        needed.add(name)
        wanted += distribution(name).requires or []
    extra = sorted(set(locked()) - needed)
    assert not extra, (
        f"requirements.txt locks {extra}, which nothing in pyproject.toml needs: run scripts/lock.sh"
    )


def test_the_lock_is_closed_and_is_what_the_tests_run_on():
    """Every locked package's own requirements are locked too (nothing floats on deployment),
    and this environment has exactly the locked versions (the tests run what is deployed)."""
    from importlib.metadata import distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = locked()
    for name, version in pins.items():
        installed = distribution(name)
        assert installed.version == version, f"{name}: {installed.version} installed, {version} locked"
        for text in installed.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                assert canonicalize_name(requirement.name) in pins, f"{name} needs {text}, not locked"
