"""The HTTP API as an OpenAPI document (vault_core/openapi.py): a valid OpenAPI 3.1 document; and
Schemathesis, run against a real `vault serve`, finds every answer in it, no 5xx, and nothing
appended by a request the server refused. That both hosts serve it, and that it lists exactly the
Function App's HTTP functions, is checked where the app runs (tests/function_app)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from urllib.parse import unquote, urlsplit

import httpx
from openapi_spec_validator import validate

from tests.support import ROOT
from tests.support.served import Served
from vault_core import http_models as http
from vault_core import openapi, routes

API_KEY = "a-key"
# What Schemathesis checks each answer for (`schemathesis run --help` explains each).
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "positive_data_acceptance",
    "missing_required_header",
    "unsupported_method",
    "allow_header_conformance",
    "ignored_auth",
    "ensure_resource_availability",
]
# Answers in the document that Schemathesis does not expect by default: a schema-valid request can
# be refused, a key within its character limit being over it in UTF-8 bytes (413) or an
# Idempotency-Key already used for another batch (422); an invalid one over a limit is 413.
SCHEMATHESIS_CONFIG = """
hooks = "tests.support.schemathesis_hooks"

[cache]
enabled = false

[checks.positive_data_acceptance]
expected-statuses = ["2xx", "401", "404", "413", "416", "422"]

[checks.negative_data_rejection]
expected-statuses = ["400", "401", "404", "405", "413", "415", "422"]
"""


def test_the_document_is_valid_openapi_3_1():
    document = openapi.document()
    validate(document)
    assert document["openapi"].startswith("3.1.")


def test_the_document_has_every_route_of_the_table_and_nothing_else():
    """The route table is the one spelling: each route is in the document at its path, with its
    methods, its name as the operationId, and no key asked for exactly when it is public."""
    document = openapi.document()
    documented = {
        (path, method): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method != "parameters"
    }
    expected = {(route.path, method.lower()): route for route in routes.ROUTES for method in route.methods}
    assert set(documented) == set(expected)
    for (path, method), route in expected.items():
        assert documented[path, method]["operationId"] == route.operation_id(method), path
        assert (documented[path, method].get("security") == []) == route.public, path


def test_schemathesis_finds_every_answer_in_the_document_and_a_refused_publish_appends_nothing(tmp_path):
    """Schemathesis's own command against `vault serve` (with an API key, so that it also sends
    requests without one): a few examples per operation in each phase, one seed. Every publish
    answer is in its HAR report; afterwards each stream holds exactly the messages whose offsets an
    accepted publish answered."""
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    har = tmp_path / "requests.har"
    served = Served(str(tmp_path / "vault"), "vault", "--api-key", API_KEY)
    try:
        run = subprocess.run(
            [
                *(sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run"),
                f"{served.url}/api/openapi.json",
                *("--header", f"{http.FUNCTION_KEY_HEADER}: {API_KEY}"),
                *("--checks", ",".join(CHECKS)),
                *("--max-examples", "20", "--seed", "1", "--workers", "1"),
                *("--report", "har", "--report-har-path", str(har)),
            ],
            cwd=tmp_path,  # where it keeps its state
            env={**os.environ, "PYTHONPATH": str(ROOT)},  # where it finds the hooks
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stdout[-20_000:] + run.stderr[-5_000:]
        answered: dict[str, set[int]] = defaultdict(set)  # stream: the offsets accepted publishes answered
        refused: list[int] = []
        for entry in json.loads(har.read_text())["log"]["entries"]:
            request, response = entry["request"], entry["response"]
            path = unquote(urlsplit(request["url"]).path)
            stream = path.removeprefix(routes.PUBLISH.prefix + "/")
            if request["method"] != "POST" or stream == path or "/" in stream:
                continue
            status, text = response["status"], response["content"].get("text", "")
            if status == 202:  # not committed within the server's wait: its location answers
                location = json.loads(text)["status"]
                answer = httpx.get(f"{served.url}{location}", headers={http.FUNCTION_KEY_HEADER: API_KEY})
                status, text = answer.status_code, answer.text
            if status == 200:
                answered[stream].update(json.loads(text)["offsets"])
            else:
                refused.append(status)
    finally:
        served.stop()
    # Accepted publishes, and refused ones whose batch was valid (sent again without the key).
    assert answered and 401 in refused, refused
    store = served.store()
    assert {name: [m.offset for m in store.reader(name).replay()] for name in store.streams()} == {
        name: sorted(offsets) for name, offsets in answered.items()
    }
