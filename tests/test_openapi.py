"""The HTTP API as an OpenAPI document (vault_core/openapi.py): a valid OpenAPI 3.1 document that
both hosts serve without a key and that lists exactly the Function App's HTTP functions."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
from openapi_spec_validator import validate

from tests.support import ROOT
from tests.support.durable.host import DurableHost
from tests.support.served import Served
from vault_core import http_models as http
from vault_core import openapi

API_KEY = "a-key"


def test_the_document_is_valid_openapi_3_1():
    document = openapi.document()
    validate(document)
    assert document["openapi"].startswith("3.1.")


def test_the_document_lists_exactly_the_function_apps_http_functions_keyed_as_they_are():
    """The Function App's HTTP functions, as the worker indexes them (in a fresh interpreter: an app
    object indexes its functions once)."""
    script = (
        "import json, function_app\n"
        "print(json.dumps([[json.loads(b) for b in f.get_raw_bindings()]"
        " for f in function_app.app.get_functions()]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    triggers = [b for bindings in json.loads(done.stdout) for b in bindings if b["type"] == "httpTrigger"]
    functions = {
        (f"{http.API_PREFIX}/{t['route']}", method.lower()): t["authLevel"]
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
