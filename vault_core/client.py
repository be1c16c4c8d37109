"""The producer client: publishes batches over the HTTP API (the Function App or `vault serve`).

Every publish carries an Idempotency-Key (generated when not given), so retrying a transient
failure (a dropped connection, 429, 5xx) can never append a batch twice.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

import urllib3
from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_after_delay, wait_exponential

from . import http_models as http
from . import routes, transfer
from .errors import BatchIdConflict, MessageTooLarge, VaultError
from .format import Message, check_stream_name
from .writer import AppendResult

RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})


class RequestRejected(VaultError):
    """The service refused the request; `status` and `problem` say why."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        super().__init__(f"{status} {problem.get('title', '')}: {problem.get('detail', '')}".strip())
        self.status = status
        self.problem = problem


class BadRequest(RequestRejected, ValueError):
    """400: the request is malformed (bad stream name, JSON, base64, empty batch...)."""


class Unauthorized(RequestRejected):
    """401/403: a missing or wrong key."""


class NotFound(RequestRejected):
    """404: no such stream (or route)."""


class PayloadTooLarge(RequestRejected, MessageTooLarge):
    """413: a message or the batch is over a limit."""


class KeyReused(RequestRejected, BatchIdConflict):
    """422: the Idempotency-Key was used before for a different batch."""


class Unavailable(RequestRejected):
    """429/5xx that persisted through every retry."""


_ERRORS = {
    400: BadRequest,
    401: Unauthorized,
    403: Unauthorized,
    404: NotFound,
    413: PayloadTooLarge,
    422: KeyReused,
}


class _Retry(Exception):
    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        self.response = response


class VaultClient:
    """Publishes to a Message Vault HTTP API at `base_url` (with or without the /api suffix).

    `key`: the function key (sent as x-functions-key). `binary`: send the compact binary batch
    encoding (else JSON). `timeout`: seconds a call may take in all, retries and waiting for a
    202 included.
    """

    def __init__(
        self,
        base_url: str,
        *,
        key: str | None = None,
        binary: bool = True,
        timeout: float = 120.0,
        attempts: int = 6,
    ) -> None:
        self._base = base_url.rstrip("/").removesuffix(routes.API_PREFIX)
        self._headers = {http.FUNCTION_KEY_HEADER: key} if key else {}
        # urllib3 keeps the connection alive between calls and costs a fraction of what fuller
        # clients spend per request; retries are ours (below), with the same Idempotency-Key.
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=10.0, read=60.0), retries=False, maxsize=4
        )
        self._binary = binary
        self._timeout = timeout
        self._attempts = attempts

    def publish(
        self, stream: str, messages: Sequence[Message], *, idempotency_key: str | None = None
    ) -> AppendResult:
        """Append one batch; returns its committed position and offsets."""
        check_stream_name(stream)
        key = http.check_idempotency_key(idempotency_key) or uuid.uuid4().hex
        batch = list(messages)
        body, content_type = (
            (transfer.encode_binary(batch), http.BINARY_BATCH)
            if self._binary
            else (http.encode_json(batch), http.JSON)
        )
        deadline = time.monotonic() + self._timeout

        def post() -> urllib3.BaseHTTPResponse:
            return self._send(
                "POST",
                routes.PUBLISH.url(stream=stream),
                body=body,
                headers={"content-type": content_type, http.IDEMPOTENCY_KEY: key},
            )

        response = post()
        delay = 0.05
        while response.status == 202:  # accepted, not yet committed: ask where it stands
            if time.monotonic() > deadline:
                raise Unavailable(
                    202, {"title": "Not committed in time", "detail": f"batch {key} is pending"}
                )
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
            try:
                response = self._send("GET", response.headers["location"])
            except NotFound:
                # The service forgot the append (a restarted server, a purged orchestration): the
                # batch sent again under the same key is appended at most once, and answers.
                response = post()
        answer = json.loads(response.data)
        return AppendResult(answer["position"], answer["offsets"])

    def stream_info(self, stream: str) -> http.StreamInfo:
        """The stream's position and a read-only URL (`vault_core.open_reader` reads it)."""
        check_stream_name(stream)
        return http.StreamInfo.model_validate_json(
            self._send("GET", routes.STREAM_INFO.url(stream=stream)).data
        )

    def streams(self) -> list[http.StreamSummary]:
        return http.StreamList.model_validate_json(self._send("GET", routes.LIST_STREAMS.url()).data).streams

    def groups(self) -> list[http.GroupLagInfo]:
        return http.GroupList.model_validate_json(self._send("GET", routes.LIST_GROUPS.url()).data).groups

    def _send(self, method: str, url: str, **options: Any) -> urllib3.BaseHTTPResponse:
        """One request, retried with backoff (honouring Retry-After) on connection errors, 429
        and 5xx; a 4xx raises its typed error."""
        target = url if url.startswith(("http://", "https://")) else self._base + url
        headers = {**self._headers, **options.pop("headers", {})}

        def once() -> urllib3.BaseHTTPResponse:
            response = self._http.request(method, target, headers=headers, **options)
            if response.status in RETRIED_STATUSES:
                raise _Retry(response)
            return response

        try:
            try:
                response = once()  # most calls succeed at once: no retry machinery for them
            except (_Retry, urllib3.exceptions.HTTPError):
                retrying = Retrying(
                    retry=retry_if_exception(lambda e: isinstance(e, _Retry | urllib3.exceptions.HTTPError)),
                    stop=stop_after_attempt(self._attempts - 1) | stop_after_delay(self._timeout),
                    wait=_wait,
                    reraise=True,
                )
                response = retrying(once)
        except _Retry as exhausted:
            response = exhausted.response
        if response.status >= 400:
            rejected = _rejected(response)
            if isinstance(rejected, Unauthorized) and http.FUNCTION_KEY_HEADER in headers:
                # Azure Functions answers a wrong key as it does a missing one: we know we sent one.
                raise Unauthorized(
                    response.status,
                    {
                        "title": "The key was not accepted",
                        "detail": f"the vault at {self._base} does not take the API key sent",
                    },
                )
            raise rejected
        return response

    def close(self) -> None:
        self._http.clear()  # closes the pooled connections

    def __enter__(self) -> VaultClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_backoff = wait_exponential(multiplier=0.1, max=5)


def _wait(state: Any) -> float:
    error = state.outcome.exception() if state.outcome else None
    if isinstance(error, _Retry):
        retry_after = error.response.headers.get("retry-after", "")
        if retry_after.isdigit():
            return min(float(retry_after), 30.0)
    return _backoff(state)


def _rejected(response: urllib3.BaseHTTPResponse) -> RequestRejected:
    try:
        problem = json.loads(response.data)
    except ValueError:
        problem = {"title": response.reason or "", "detail": response.data[:500].decode(errors="replace")}
    if not isinstance(problem, dict):
        problem = {"detail": str(problem)}
    kind = _ERRORS.get(response.status)
    if kind is None:
        kind = Unavailable if response.status in RETRIED_STATUSES else RequestRejected
    return kind(response.status, problem)
