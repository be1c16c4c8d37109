"""The stream's durable entity, the only code in the app that appends, and the staging of batches
too large to ride in an orchestration's input (a claim check in blob storage)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import azure.durable_functions as df
import azure.functions as func
from azure.core.exceptions import AzureError, HttpResponseError
from azure.durable_functions.models.entities import EntityState, OperationResult

from .. import http_models as http
from .. import metrics, transfer
from ..errors import FencedError, StreamBusyError
from ..format import BATCH_ID, Message
from ..service import problem_for
from ..writer import AppendResult, Batch
from .settings import entity_pool, owners, staging, staging_pool

log = logging.getLogger("vault.functions")


ENTITY = "stream_writer"


# Batches up to this size ride inside the orchestration input; larger ones are staged in blob
# storage (a claim check). The input travels base64-encoded, about five times over (the start
# message, the Instances and History rows, the request to the entity and its History row), and
# sits in the entity's saved state while its request waits in the entity's queue: 4 KiB (5.5 K
# characters) keeps all of them far below the sizes at which Durable moves payloads to blobs
# (45 KB queue messages, 30 K-character table properties) and the entity's state small.
INLINE_BYTES = 4 * 1024


# An entity invocation starts no new append after this long; the rest of its operations answer
# "retry" (the orchestration sends them again). It keeps every invocation far inside the function
# timeout (host.json: 10 min), which would otherwise report appends that did commit as failed.
ENTITY_BUDGET_SECONDS = 60.0


# Staged batches an entity holds in memory at once (each is at most 16 MiB).
ROUND_BYTES = 64 * 1024 * 1024


def stage(name: str, batch: bytes) -> str:
    staging().write_file(name, batch)
    return name


async def stream_writer(context: func.EntityContext) -> str:
    """The stream's one writer. Its batch blocks on storage for up to ENTITY_BUDGET_SECONDS, on
    a pool of its own: for Python the extension dispatches entity batches and orchestrator
    replays together (maxConcurrentOrchestratorFunctions covers both), and a sync entity would
    hold the worker's thread pool, which the orchestrator's replays need, for that long."""
    return await asyncio.get_running_loop().run_in_executor(entity_pool(), _entity_batch, context.body)


def _entity_batch(body: str) -> str:
    """The runtime hands the entity every queued operation at once; it appends them together and
    answers each (its state is a summary for operators: appends and position). Built from the
    SDK's own context and result types, as the SDK's per-operation handler is."""
    entity, operations = df.DurableEntityContext.from_json(body)
    started = datetime.now(UTC)
    try:
        outcomes = _append_operations(entity.entity_key, operations)
    except Exception as error:
        # Raising would fail the whole invocation, which the runtime delivers again and again,
        # with no limit, stopping every append to the stream. Each answer says to try again
        # instead: the appends that did commit are found by their batch ids.
        log.exception("the stream's entity failed its batch of %d operations", len(operations))
        outcomes = [answer_for(error, retry=True) for _ in operations]
    state = entity.get_state(lambda: {"appends": 0, "position": 0}) or {"appends": 0, "position": 0}
    appended = [o["position"] for o in outcomes if "position" in o]
    if appended:
        state = {"appends": state["appends"] + len(appended), "position": max(state["position"], *appended)}
    elapsed = int((datetime.now(UTC) - started).total_seconds() * 1000)
    results = [
        OperationResult(
            is_error=False,
            duration=elapsed,
            execution_start_time_ms=int(started.timestamp() * 1000),
            result=o,
        )
        for o in outcomes
    ]
    answer = EntityState(results=results, signals=[], entity_exists=True, state=state).to_json_string()
    stream = {"stream": entity.entity_key}
    metrics.entity_operations.record(len(operations), stream)
    metrics.entity_state_bytes.record(len(json.dumps(state)), stream)
    return answer


class _Append:
    """One operation of an entity batch: its payload, its messages once read, its outcome."""

    def __init__(self, payload: dict[str, Any]) -> None:
        self.payload = payload
        self.messages: list[Message] | None = None
        self.outcome: dict[str, Any] | None = None

    @property
    def staged_bytes(self) -> int:
        return 0 if "inline" in self.payload else http.MAX_BODY_BYTES


def _append_operations(stream: str, operations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each operation's answer: {"position", "offsets"}, or {"problem", "retry", ...}."""
    deadline = time.monotonic() + ENTITY_BUDGET_SECONDS
    appends: list[_Append] = []
    answers: list[_Append | dict[str, Any]] = []
    for operation in operations:
        try:
            appends.append(_Append(_payload(stream, operation)))
        except ValueError as error:  # answered on its own: it stops none of the others
            answers.append(answer_for(error, retry=False))
            continue
        answers.append(appends[-1])
    for chunk in _rounds(appends):
        if time.monotonic() > deadline:
            for append in chunk:
                append.outcome = answer_for(TimeoutError("deferred: the entity's batch ran long"), retry=True)
            continue
        _append_round(stream, chunk)
    return [a.outcome if isinstance(a, _Append) else a for a in answers]  # type: ignore[misc]


def _payload(stream: str, operation: dict[str, Any]) -> dict[str, Any]:
    """The append an operation carries: the orchestration's payload, whose JSON text the runtime
    serialized once more. ValueError says what is wrong with one that does not carry an append
    for this stream (from another version of the app, say)."""
    if operation.get("name") != "append":
        raise ValueError(f"unknown operation {operation.get('name')!r}")
    text = operation.get("input")
    if not isinstance(text, str):
        raise ValueError("the append operation has no input")
    try:
        payload = json.loads(json.loads(text))
    except (ValueError, TypeError) as error:
        raise ValueError(f"the append operation's input is not the JSON text of a batch: {error}") from None
    if (
        not isinstance(payload, dict)
        or not all(isinstance(payload.get(field), str) for field in ("stream", "batch_id", "digest"))
        or sum(isinstance(payload.get(field), str) for field in ("inline", "staged")) != 1
    ):
        raise ValueError(
            "the append operation's input is not a batch (stream, batch_id, digest and inline or staged)"
        )
    if payload["stream"] != stream:
        raise ValueError(f"the append for stream {payload['stream']!r} reached the entity of {stream!r}")
    if not BATCH_ID.fullmatch(payload["batch_id"]):
        raise ValueError(f"the append's batch id {payload['batch_id'][:140]!r} is not one")
    return payload


def _rounds(appends: list[_Append]) -> Iterator[list[_Append]]:
    """Consecutive appends holding at most ROUND_BYTES of staged batches between them."""
    chunk: list[_Append] = []
    size = 0
    for append in appends:
        if chunk and size + append.staged_bytes > ROUND_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append(append)
        size += append.staged_bytes
    if chunk:
        yield chunk


def _append_round(stream: str, appends: list[_Append]) -> None:
    list(staging_pool().map(_read, appends))
    ready = [a for a in appends if a.outcome is None and a.messages is not None]
    if ready:
        # A writer fenced since this worker last wrote is dropped and the stream taken back once
        # (Writers' policy): the runtime has just handed this batch to this worker, so it owns the
        # entity now.
        batches = [Batch(a.messages or [], a.payload["batch_id"]) for a in ready]
        outcomes = owners().append_all(stream, batches)
        for append, outcome in zip(ready, outcomes, strict=True):
            append.outcome = _appended(outcome) if isinstance(outcome, AppendResult) else answer_for(outcome)
    _missing_staged(stream, appends)
    committed = [
        a.payload["staged"] for a in appends if "staged" in a.payload and "position" in (a.outcome or {})
    ]
    list(staging_pool().map(_delete_staged, committed))


def _delete_staged(name: str) -> None:
    """Best effort: a staged batch left behind is removed by the staging container's lifecycle
    rule, and an append it stood for is answered from the stream if it comes again."""
    try:
        staging().delete_file(name)
    except Exception as error:
        log.warning("could not delete the staged batch %s (%s); it expires", name, type(error).__name__)


def _read(append: _Append) -> None:
    """The append's messages, from its inline copy or its staged blob, checked against the digest
    the HTTP function took."""
    payload = append.payload
    try:
        body = (
            base64.b64decode(payload["inline"])
            if "inline" in payload
            else staging().read_file(payload["staged"])
        )
    except FileNotFoundError:
        return  # staged, committed and deleted before: _missing_staged answers it
    except Exception as error:
        append.outcome = answer_for(error)
        return
    if hashlib.sha256(body).hexdigest() != payload["digest"]:
        append.outcome = answer_for(
            RuntimeError(f"the staged batch {payload.get('staged')} is damaged"), retry=False
        )
        return
    try:
        append.messages = http.parse_batch(http.BINARY_BATCH, body)
    except Exception as error:
        append.outcome = answer_for(error, retry=False)


def _missing_staged(stream: str, appends: list[_Append]) -> None:
    """A staged batch is deleted once committed; if the runtime delivers its operation again after
    that, the stream's record of the batch id answers it."""
    for append in appends:
        if append.messages is not None or append.outcome is not None:
            continue
        try:
            found = owners().writer(stream).find(append.payload["batch_id"])
        except Exception as error:
            append.outcome = answer_for(error)
            continue
        stored = [(m.key, m.value) for m in found[1]] if found is not None else []
        if (
            found is not None
            and hashlib.sha256(transfer.encode_binary(stored)).hexdigest() == append.payload["digest"]
        ):
            append.outcome = _appended(found[0])
        else:
            append.outcome = answer_for(
                RuntimeError(f"the staged batch {append.payload['staged']} is gone; send the batch again"),
                retry=False,
            )


def _appended(result: AppendResult) -> dict[str, Any]:
    return {"position": result.position, "offsets": result.offsets}


def answer_for(error: BaseException, *, retry: bool | None = None) -> dict[str, Any]:
    """An operation's answer for an error: the problem the producer would see, and whether the
    orchestration should try again (the problem may pass)."""
    retry = _may_pass(error) if retry is None else retry
    problem = problem_for(error)
    if retry:
        problem = http.unavailable(
            "stream-unavailable",
            "The stream is unavailable",
            f"the append could not be committed yet ({type(error).__name__}: {error}); "
            "retry with the same Idempotency-Key",
        )
    return {
        "problem": problem.problem.model_dump(),
        "retry": retry,
        "retry_after": problem.headers.get("Retry-After"),
    }


def _may_pass(error: BaseException) -> bool:
    if isinstance(error, StreamBusyError | FencedError | TimeoutError | ConnectionError):
        return True
    if isinstance(error, HttpResponseError):
        return error.status_code is None or error.status_code >= 500 or error.status_code in (408, 429)
    return isinstance(error, AzureError)  # connection and response errors on the way to storage
