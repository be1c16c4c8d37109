"""The HTTP side of the Functions host on Flex Consumption: the front end routes /api/... to the
app's HTTP functions on the instances of the HTTP group (never on the Durable group's), checks
function keys, and holds to the platform's limits:

- a body over FUNCTIONS_REQUEST_BODY_SIZE_LIMIT (100 MiB unless the app sets it) is refused with a
  500 before it is read, as the host's request-size check and its exception handler answer;
- at most perInstanceConcurrency requests run on an instance at once (Python's default is 1);
  past that a request waits for a free slot, and the group scales out, each new instance paying
  its cold start, up to maximumInstanceCount; with no instance at all (scaled to zero), the first
  request waits for one to start;
- an answer that takes longer than the front end's 230 s is a 502, while the function runs on;
- an instance that dies mid-request is a 502.
Routing is the subset the app's routes use: {name} takes one path segment and a last {*name} the
rest of the path (or nothing); the default api prefix; HEAD answered without a body."""

from __future__ import annotations

import re
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlparse

from tests.support.durable.bindings import Answer, HttpCall

if TYPE_CHECKING:
    from tests.support.durable.host import DurableHost

DEFAULT_BODY_LIMIT = 100 * 1024 * 1024  # FUNCTIONS_REQUEST_BODY_SIZE_LIMIT's default


class BodyTooLarge(Exception):
    """A body over the host's limit: refused before (the rest of) it is read."""


def handler(host: DurableHost) -> type[BaseHTTPRequestHandler]:
    limit = int(host.app_settings.get("FUNCTIONS_REQUEST_BODY_SIZE_LIMIT") or DEFAULT_BODY_LIMIT)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            head = self.command == "HEAD"  # the function's Content-Length stands, with no body
            for name, value in headers.items():
                if name.lower() not in ("transfer-encoding", "connection") and (
                    head or name.lower() != "content-length"
                ):
                    self.send_header(name, value)
            if not head:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks: list[bytes] = []
                size = 0
                while True:
                    length = int(self.rfile.readline().split(b";")[0], 16)
                    if length == 0:
                        self.rfile.readline()
                        return b"".join(chunks)
                    size += length
                    if size > limit:
                        raise BodyTooLarge()
                    chunks.append(self.rfile.read(length))
                    self.rfile.readline()
            declared = int(self.headers.get("Content-Length") or 0)
            if declared > limit:
                raise BodyTooLarge()
            return self.rfile.read(declared)

        def _handle(self) -> None:
            try:
                body = self._body()
            except BodyTooLarge:
                host.stats["bodies refused by the host"] += 1
                self.close_connection = True
                return self._send(500, b"", {})
            url = urlparse(self.path)
            path = url.path.removeprefix("/api/")
            for function in host.functions:
                if function["trigger"] != "httpTrigger" or self.command not in (function["methods"] or []):
                    continue
                pattern = re.sub(r"/\{\*(\w+)\}$", r"(?:/(?P<\1>.*))?", function["route"])
                pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern)
                match = re.fullmatch(pattern, path)
                if match is None:
                    continue
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if function["authLevel"] != "ANONYMOUS" and host.function_key is not None:
                    given = self.headers.get("x-functions-key") or query.get("code")
                    if given != host.function_key:
                        return self._send(401, b"", {})
                call = HttpCall(
                    method=self.command,
                    url=f"http://localhost:7071{self.path}",
                    headers=dict(self.headers.items()),
                    query=query,
                    route_params={k: unquote(v or "") for k, v in match.groupdict().items()},
                    body=body,
                )
                reply = self._run(function["name"], call)
                if reply is None:
                    return self._send(502, b"Bad Gateway", {"Content-Type": "text/plain"})
                if reply.http is None:
                    host.note(f"HTTP function {function['name']} raised: {reply.error}")
                    return self._send(500, b"Internal Server Error", {"Content-Type": "text/plain"})
                return self._send(reply.http.status, reply.http.body, reply.http.headers)
            return self._send(404, b"", {})

        def _run(self, function: str, call: HttpCall) -> Answer | None:
            """The function's answer, or None for a 502: no instance could take it in time, it died
            on the way, or the front end stopped waiting."""
            try:
                instance = host.http_slot()
            except Exception:  # none in time, or one that could not start
                return None
            future: Future[Answer] = host.calls.submit(
                instance.invoke, function, host.settings.function_timeout, http=call
            )
            future.add_done_callback(lambda _: host.release_http_slot(instance))
            try:
                return future.result(timeout=host.settings.front_end_timeout)
            except FutureTimeout:
                host.stats["requests past the front end's limit"] += 1
                return None
            except Exception:  # the instance died or stopped: InvocationFailed, FunctionTimedOut
                return None

        do_GET = do_HEAD = do_POST = do_DELETE = _handle

    return Handler
