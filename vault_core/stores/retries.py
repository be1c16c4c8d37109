"""How the Azure stores retry storage and how long they wait for it.

Resets, timeouts, `500 Operation timed out` and `503 Server Busy` are everyday events on Azure,
and an append waits for each of its requests (every producer of a stream waits on one group
commit): a retry must come at once, then back off if storage keeps refusing. The blob SDK's own
ExponentialRetry waits `initial_backoff + increment_base ** n` with n starting at 1, so its first
retry comes after a second or more: at 5% of requests faulted, a stream spent most of its time
waiting. Here the SDK's retry machinery stays (which errors and statuses it retries, rewinding
bodies, counting connect and read errors apart); only the waits are ours: the first retry at once
(as azure-core's own policy does: a reset or a lost answer is usually a one-off), then 0.05, 0.5,
2.5 and 12.5 s (each jittered by half, so that writers do not retry in step), some 16 s in all.
Even 20 ms before the first retry cost a stream at 5% faults a third of its appends. Throttling
is different: on `503 Server Busy` (or 429) with Retry-After, storage says how long to back off,
and the wait is at least that.

Table storage's SDK takes azure-core's retry settings: its first retry goes at once and later ones
back off exponentially from `retry_backoff_factor`, honouring Retry-After; as many retries as here.

A retried write may already have been applied (an answer lost on the way back): every write the
stores retry is idempotent (the same pages, the same bytes, a commit included: it is fenced by the
lease alone) or conditional, and a conditional checkpoint refused after such a retry is resolved
by reading it back (its save id), never by guessing. A commit whose retries all fail leaves its
writer in doubt: it reads the commit record back before it appends again.

Every failed request is counted (`vault.storage.faults`, and `vault.storage.retries` when it is
sent again) by kind: `connection` (refused or reset before storage had it), `response` (the
answer was lost: storage may have applied the request), `timeout`, `throttled` (429 and 503)
and `server` (other 5xx answers).
"""

from __future__ import annotations

import random
import sys
from typing import Any
from urllib.parse import unquote, urlsplit

from azure.core.exceptions import (
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import SansIOHTTPPolicy
from azure.storage.blob import ExponentialRetry

from .. import metrics
from ..format import STREAM_NAME
from .endpoints import is_path_style

WAITS = (0.0, 0.05, 0.5, 2.5, 12.5)  # seconds before each retry
RETRIES = len(WAITS)
THROTTLED = (429, 503)  # the answers whose Retry-After is honoured
MAX_RETRY_AFTER = 30.0
CONNECT_TIMEOUT = 5  # seconds to open a connection: on Azure it takes milliseconds
# Seconds without a byte of the answer: the SDK's own 60. A busy emulator (or storage account)
# can take over 20 s to start a large read's answer, and cutting it off only sends it again.
READ_TIMEOUT = 60


class QuickRetry(ExponentialRetry):
    """Storage's exponential retry with the waits above."""

    def __init__(self) -> None:
        super().__init__(retry_total=RETRIES, random_jitter_range=0)

    def increment(
        self,
        settings: dict[str, Any],
        request: Any,
        response: Any = None,
        error: Any = None,
    ) -> bool:
        retrying: bool = super().increment(settings, request, response=response, error=error)
        status = None if response is None else response.status_code
        code = None if response is None else response.headers.get("x-ms-error-code")
        kind = fault_kind(status, code, error)
        metrics.storage_fault(kind, retried=retrying, stream=_stream_of(request.url))
        return retrying

    def get_backoff_time(self, settings: dict[str, Any]) -> float:
        wait = WAITS[min(settings["count"], RETRIES) - 1]  # count is 1 at the first retry
        return max(random.uniform(wait / 2, wait * 1.5), _retry_after(settings))


def _retry_after(settings: dict[str, Any]) -> float:
    """The seconds a throttling answer asked for in Retry-After (0 if it was not one)."""
    history = settings.get("history") or []
    response = history[-1].http_response if history else None
    if response is None or response.status_code not in THROTTLED:
        return 0.0
    try:
        return min(float(response.headers.get("retry-after", "")), MAX_RETRY_AFTER)
    except ValueError:
        return 0.0


class CountedFaults(SansIOHTTPPolicy[Any, Any]):
    """Counts the faults of Table storage's requests, attempt by attempt (in the pipeline after
    its SDK's retry policy, which this leaves as it is)."""

    _FAULT = "vault.fault"  # the kind of the attempt's fault, in the request's context

    def on_request(self, request: PipelineRequest[Any]) -> None:
        kind = request.context.get(self._FAULT)
        if kind is not None:  # this attempt retries a faulted one
            metrics.storage_retries.add(1, {"kind": kind})
            del request.context[self._FAULT]

    def on_response(self, request: PipelineRequest[Any], response: PipelineResponse[Any, Any]) -> None:
        status = response.http_response.status_code
        if status == 429 or status >= 500:
            code = response.http_response.headers.get("x-ms-error-code")
            self._faulted(request, fault_kind(status, code, None))

    def on_exception(self, request: PipelineRequest[Any]) -> None:
        self._faulted(request, fault_kind(None, None, sys.exc_info()[1]))

    def _faulted(self, request: PipelineRequest[Any], kind: str) -> None:
        metrics.storage_faults.add(1, {"kind": kind})
        request.context[self._FAULT] = kind


def fault_kind(status: int | None, error_code: str | None, error: BaseException | None) -> str:
    if isinstance(error, (ServiceRequestTimeoutError, ServiceResponseTimeoutError)):
        return "timeout"
    if isinstance(error, ServiceRequestError):
        return "connection"
    if isinstance(error, ServiceResponseError):
        return "response"
    if status in THROTTLED:
        return "throttled"
    if error_code == "OperationTimedOut":
        return "timeout"
    return "server"


def _stream_of(url: str) -> str | None:
    """The stream a blob request is for: blobs are named `<stream>/<segment>`, in the stream's
    container or the store's."""
    parts = urlsplit(url)
    names = [unquote(name) for name in parts.path.split("/") if name]
    if is_path_style(parts.hostname or ""):
        names = names[1:]  # http://127.0.0.1:10000/<account>/<container>/...
    if len(names) >= 3 and STREAM_NAME.fullmatch(names[1]):
        return names[1]
    return None


def blob_client_options() -> dict[str, Any]:
    return {"retry_policy": QuickRetry(), "connection_timeout": CONNECT_TIMEOUT, "read_timeout": READ_TIMEOUT}


def table_client_options() -> dict[str, Any]:
    return {
        "retry_total": RETRIES,
        "connection_timeout": CONNECT_TIMEOUT,
        "read_timeout": READ_TIMEOUT,
        "per_retry_policies": [CountedFaults()],
    }
