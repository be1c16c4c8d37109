"""The Durable extension's HTTP API that the SDK's DurableOrchestrationClient calls (the part the
app uses: start, status, purge, entity state), one path prefix per app instance, answered as the
extension answers (v2.13 and v3): a start is a 202 with the instance's URLs, a taken id an
OrchestrationAlreadyExistsException, an unknown instance a 404 with an empty body, a failed one a
200 like any finished one. Each call can be made to fail on demand
(DurableHost.fail_client_calls), answered as the extension answers an exception of its storage."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlparse

from tests.support.durable import protocol as p

if TYPE_CHECKING:
    from tests.support.durable.host import AppInstance, DurableHost


def _extension_error(message: str, exception_type: str) -> dict[str, str]:
    """The body the extension's HTTP API answers an exception with (v2.13 and v3)."""
    return {
        "Message": "Something went wrong while processing your request",
        "ExceptionMessage": message,
        "ExceptionType": exception_type,
        "StackTrace": f"   at {exception_type}",
    }


STORAGE_ERROR = "DurableTask.AzureStorage.Storage.DurableTaskStorageException"


def handler(host: DurableHost) -> type[BaseHTTPRequestHandler]:

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: Any = None, **headers: str) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            if body is not None:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self) -> tuple[AppInstance | None, list[str], dict[str, list[str]]]:
            url = urlparse(self.path)
            parts = [unquote(part) for part in url.path.split("/") if part]
            caller = next((i for i in host.instances if i.name == parts[0]), None)
            assert parts[1] == "durabletask", self.path
            return caller, parts[2:], parse_qs(url.query)

        def _failing(self, call: str) -> bool:
            """Answers the call as a storage error if the test asked for one."""
            if not host.take_client_fault(call):
                return False
            host.stats[f"client {call} calls failed"] += 1
            self._send(500, _extension_error("The server is busy.", STORAGE_ERROR))
            return True

        def do_POST(self) -> None:
            caller, parts, _query = self._route()
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if parts[0] == "orchestrators":
                if self._failing("start"):
                    return None
                name = parts[1]
                instance_id = parts[2] if len(parts) > 2 else uuid.uuid4().hex
                # The SDK posts the input's JSON text as a JSON string.
                input_text = json.loads(raw) if raw else None
                status = host.start(caller, name, instance_id, input_text)
                if status is not None:  # the id is taken by an instance that has not finished
                    return self._send(
                        500,
                        _extension_error(
                            f"An Orchestration instance with the status {status} already exists.",
                            "DurableTask.Core.Exceptions.OrchestrationAlreadyExistsException",
                        ),
                    )
                base = f"http://localhost:7071/runtime/webhooks/durabletask/instances/{instance_id}"
                return self._send(
                    202,
                    {"id": instance_id, "statusQueryGetUri": base, "purgeHistoryDeleteUri": base},
                    Location=base,
                    Retry_After="10",
                )
            return self._send(404)

        def do_GET(self) -> None:
            _caller, parts, query = self._route()
            if parts[0] == "instances" and len(parts) == 2:
                host.hub.round_trip("table read")  # the Instances row
                host.stats["status requests"] += 1
                if self._failing("status"):
                    return None
                record = host.hub.peek(parts[1])
                if record is None:
                    return self._send(404)  # an empty body
                with host.hub.lock:
                    body = {
                        "name": record.name,
                        "instanceId": record.instance,
                        "runtimeStatus": record.status,
                        "input": record.input_text
                        if query.get("showInput", ["true"])[0].lower() != "false"
                        else None,
                        "customStatus": record.custom_status,
                        "output": record.output,
                        "createdTime": _iso(record.created),
                        "lastUpdatedTime": _iso(record.updated),
                    }
                if record.status in ("Pending", "Running"):
                    return self._send(202, body, Location=self.path, Retry_After="5")
                return self._send(200, body)  # Failed too, unless the caller asks for a 500
            if parts[0] == "entities" and len(parts) == 3:
                host.hub.round_trip("table read")
                record = host.hub.peek(p.entity_instance_id(parts[1], parts[2]))
                if record is None or not record.exists:
                    return self._send(404)
                return self._send(200, json.loads(record.state or "null"))
            return self._send(404)

        def do_DELETE(self) -> None:
            _caller, parts, query = self._route()
            if parts[0] != "instances":
                return self._send(404)
            if self._failing("purge"):
                return None
            if len(parts) == 2:
                deleted = host.hub.purge([parts[1]])
            else:
                if "createdTimeFrom" not in query:
                    return self._send(400, "Please provide value for 'createdTimeFrom' parameter.")
                created_from = _parse_iso(query["createdTimeFrom"][0])
                created_to = (
                    _parse_iso(query["createdTimeTo"][0]) if "createdTimeTo" in query else datetime.now(UTC)
                )
                statuses = query.get("runtimeStatus", [""])[0].split(",")
                deleted = host.purge(created_from, created_to, [s for s in statuses if s])
            if not deleted:
                return self._send(404)
            return self._send(200, {"instancesDeleted": deleted})

    return Handler


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)
