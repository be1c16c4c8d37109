"""The Function App's logic, behind the thin function_app.py: HTTP functions validate a batch and
hand it to an orchestration (one per stream and Idempotency-Key), which calls the stream's durable
entity; the entity is the only code in the app that appends, through the vault_core writer.
Imported only by the Function App (it needs azure-functions and its durable extension).

How it runs on the Durable runtime (Azure Storage provider):
- The runtime runs a stream's entity in one worker process at a time, but moves it with its
  control-queue partition whenever the app scales or an instance is recycled. The entity therefore
  opens its writer with `takeover=True`: the new owner fences the old one at once instead of
  waiting for its blob lease to lapse.
- The runtime hands an entity every operation queued for it (up to maxEntityOperationBatchSize) in
  one invocation. The entity appends them together, one data write and one commit for the lot,
  each batch atomic with its own result, so that throughput grows with the number of producers.
- Delivery is at least once: a batch whose worker dies is run again, possibly elsewhere. Each
  append carries its Idempotency-Key as batch id, so running it again appends nothing.
- A problem that may pass (the stream held by another writer, a lost ownership, a storage error)
  is retried inside the orchestration with durable timers, so a 202's Location resolves to the
  final answer.

Settings (app settings, or local.settings.json when run with Core Tools):
    VAULT_STORE               where streams live: a connection string, an account URL (Entra ID
                              via DefaultAzureCredential) or, for development, a directory;
                              default: the AzureWebJobsStorage connection string
    VAULT_CONTAINER           the streams' blob container (default "vault")
    VAULT_STAGING_CONTAINER   where large batches wait for their entity (default "vault-staging")
    VAULT_WAIT_SECONDS        how long a POST waits for its commit before answering 202 (30)
    VAULT_LEASE_SECONDS       the writers' blob lease (15-60, default 60)
    VAULT_PURGE_AFTER_HOURS   finished appends' orchestration history is purged after (24)
    VAULT_READ_URL_SECONDS    how long the read URLs of GET /api/streams/{stream} last (3600,
                              at most 7 days)
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import logging
import mimetypes
import os
import time
import uuid
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import azure.durable_functions as df
import azure.functions as func
from azure.core.exceptions import AzureError, HttpResponseError
from azure.durable_functions.models.entities import EntityState, OperationResult

from . import http_models as http
from . import openapi, transfer
from .errors import BatchIdConflict, FencedError, StreamBusyError
from .format import BATCH_ID, Message
from .service import (
    CONSOLE,
    Writers,
    appended_body,
    describe_groups,
    describe_stream,
    pending_answer,
    problem_for,
    read_url_lifetime,
    serve_log,
    summarize_streams,
)
from .store import Store, open_store
from .writer import AppendResult, Batch

log = logging.getLogger("vault.functions")

ORCHESTRATOR = "append_batch"
ENTITY = "stream_writer"
# Batches up to this size ride inside the orchestration input; larger ones are staged in blob
# storage (a claim check). The input travels base64-encoded, about five times over (the start
# message, the Instances and History rows, the request to the entity and its History row), and
# sits in the entity's saved state while its request waits in the entity's queue: 4 KiB (5.5 K
# characters) keeps all of them far below the sizes at which Durable moves payloads to blobs
# (45 KB queue messages, 30 K-character table properties) and the entity's state small.
INLINE_BYTES = 4 * 1024
# Seconds between the attempts of an append that met a problem that may pass: about 75 s in all,
# more than the longest blob lease (60 s) another writer may hold.
RETRY_DELAYS = (1, 2, 4, 8, 15, 15, 15, 15)
# An entity invocation starts no new append after this long; the rest of its operations answer
# "retry" (the orchestration sends them again). It keeps every invocation far inside the function
# timeout (host.json: 10 min), which would otherwise report appends that did commit as failed.
ENTITY_BUDGET_SECONDS = 60.0
# Azure's front end (its load balancer) drops an HTTP request it has had no answer to for 230 s,
# whatever the function timeout. A POST answers, 202 at the latest, within this many seconds of
# its arrival (parsing and staging included); the rest is for the host's time before the function
# starts and after it answers.
MAX_WAIT_SECONDS = 200.0
# An hourly purge covers appends created this long before its cut-off: about an hour's worth,
# with room for runs that failed or did not run.
PURGE_WINDOW = timedelta(hours=3)
# Staged batches an entity holds in memory at once (each is at most 16 MiB).
ROUND_BYTES = 64 * 1024 * 1024
FINISHED = (
    df.OrchestrationRuntimeStatus.Completed,
    df.OrchestrationRuntimeStatus.Failed,
    df.OrchestrationRuntimeStatus.Terminated,
)


def setting(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name) or default


def _open(container: str) -> Store:
    """The storage the app writes to, in one of its containers."""
    target = setting("VAULT_STORE") or setting("AzureWebJobsStorage")
    if not target:
        raise RuntimeError("set VAULT_STORE (or AzureWebJobsStorage) to where streams live")
    return open_store(target, container=container)


@functools.cache
def store() -> Store:
    return _open(setting("VAULT_CONTAINER") or "vault")


@functools.cache
def staging() -> Store:
    """Where staged batches go: a container of their own beside the streams."""
    return _open(setting("VAULT_STAGING_CONTAINER") or "vault-staging")


def instance_id(stream: str, key: str) -> str:
    """The append orchestration's instance id: one per stream and Idempotency-Key, so the same key
    on two streams is two appends. Durable's Azure Storage provider runs an instance on the
    control-queue partition its id hashes to; the id ends in the smallest number that puts it on
    its stream entity's partition, so that both run on the same instance and wake each other at
    once, rather than waiting for another instance's next poll of its queue. At most 184
    characters, none of them / \\ # ? or a leading @ (stream names are lowercase letters, digits
    and hyphens; keys letters, digits and ._:-)."""
    partitions = _partition_count()
    entity = _partition_of(f"@{ENTITY}@{stream}", partitions)
    for salt in range(64 * partitions):  # a match is found within `partitions` tries on average
        candidate = f"{stream}:{key}:{salt}"
        if _partition_of(candidate, partitions) == entity:
            return candidate
    return f"{stream}:{key}"  # as good an id, on another partition (about 1 time in 10^28)


def _partition_of(instance: str, partitions: int) -> int:
    """Durable's Azure Storage provider: 32-bit FNV-1a over the id's UTF-8 bytes, modulo the
    partition count."""
    value = 2166136261
    for byte in instance.encode():
        value = ((value ^ byte) * 16777619) & 0xFFFFFFFF
    return value % partitions


def _partition_count() -> int:
    """host.json's partitionCount (the provider's default, 4, if it sets none)."""
    return int(_durable_settings().get("storageProvider", {}).get("partitionCount", 4))


@functools.cache
def _durable_settings() -> dict[str, Any]:
    """host.json's durableTask section (empty where there is no host.json: the defaults apply)."""
    try:
        config = json.loads((Path(__file__).resolve().parent.parent / "host.json").read_text())
    except (OSError, ValueError):
        return {}
    return config.get("extensions", {}).get("durableTask", {})


def problem_response(error: BaseException) -> func.HttpResponse:
    problem = problem_for(error)
    return func.HttpResponse(
        problem.body(), status_code=problem.status, headers=problem.headers, mimetype=http.PROBLEM_JSON
    )


def json_response(model: Any, status: int = 200, **headers: str) -> func.HttpResponse:
    return func.HttpResponse(model.model_dump_json(), status_code=status, headers=headers, mimetype=http.JSON)


# --- HTTP functions -------------------------------------------------------------------------


async def publish(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    arrived = asyncio.get_running_loop().time()
    try:
        stream = http.check_stream(req.route_params.get("stream", ""))
        key = http.check_idempotency_key(req.headers.get(http.IDEMPOTENCY_KEY)) or uuid.uuid4().hex
        http.check_content_length(req.headers.get("content-length"))
        # Parsing, encoding and hashing up to 16 MiB would stall every request on this worker's
        # event loop: they run on a thread.
        batch, digest = await asyncio.to_thread(_encode, req.headers.get("content-type"), req.get_body())
        instance = instance_id(stream, key)
        status = await _status(client, instance)
        earlier = _input_of(status)
        if earlier is not None and earlier.get("digest") != digest:
            raise BatchIdConflict(
                f"Idempotency-Key {key!r} was already used on stream {stream!r} for a different batch"
            )
        if _should_start(status):
            payload: dict[str, Any] = {"stream": stream, "batch_id": key, "digest": digest}
            if len(batch) <= INLINE_BYTES:
                payload["inline"] = base64.b64encode(batch).decode()
            else:
                payload["staged"] = await asyncio.to_thread(_stage, f"{stream}/{key}/{digest}", batch)
            try:
                await client.start_new(ORCHESTRATOR, instance, payload)
            except Exception as error:
                # A retry of this request may have started it first (the runtime refuses a second
                # start of a running instance): then wait for that one. Otherwise the runtime did
                # not start the append (storage trouble, throttling): nothing will append it.
                if await _status(client, instance) is None:
                    log.warning("the Durable runtime refused to start %s: %s", instance, error)
                    raise _not_started("the Durable runtime refused to start it") from error
        wait = min(float(setting("VAULT_WAIT_SECONDS") or 30), MAX_WAIT_SECONDS)
        return await _outcome(client, stream, key, arrived + wait)
    except Exception as error:
        return problem_response(error)


async def batch_status(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    try:
        stream = http.check_stream(req.route_params.get("stream", ""))
        key = http.check_idempotency_key(req.route_params.get("token"))
        status = await _status(client, instance_id(stream, key)) if key else None
        earlier = _input_of(status)
        if earlier is None or earlier.get("stream") != stream:
            raise http.unknown_batch()
        return await _outcome(client, stream, key, 0.0)  # type: ignore[arg-type]
    except Exception as error:
        return problem_response(error)


def stream_info(req: func.HttpRequest) -> func.HttpResponse:
    try:
        stream = http.check_stream(req.route_params.get("stream", ""))
        lifetime = read_url_lifetime(setting("VAULT_READ_URL_SECONDS"))
        return json_response(describe_stream(store(), stream, lifetime=lifetime))
    except Exception as error:
        return problem_response(error)


def list_streams(req: func.HttpRequest) -> func.HttpResponse:
    try:
        return json_response(summarize_streams(store()))
    except Exception as error:
        return problem_response(error)


def stream_log(req: func.HttpRequest) -> func.HttpResponse:
    try:
        stream = http.check_stream(req.route_params.get("stream", ""))
        status, body, headers = serve_log(store(), stream, req.headers.get("range"), req.method == "HEAD")
        media_type = "application/octet-stream"
        return func.HttpResponse(body, status_code=status, headers=headers, mimetype=media_type)
    except Exception as error:
        return problem_response(error)


def list_groups(req: func.HttpRequest) -> func.HttpResponse:
    try:
        return json_response(describe_groups(store()))
    except Exception as error:
        return problem_response(error)


def console(req: func.HttpRequest) -> func.HttpResponse:
    """A file of the console (index.html for the folder itself); nothing outside it."""
    url = urlsplit(req.url)
    if not req.route_params.get("path") and not url.path.endswith("/"):
        # The page's files are named relative to the folder: .../console must become .../console/.
        return func.HttpResponse(status_code=301, headers={"Location": f"{url.path}/"})
    path = req.route_params.get("path") or "index.html"
    file = (CONSOLE / path).resolve()
    if not file.is_relative_to(CONSOLE) or not file.is_file():
        return problem_response(http.not_found(f"no console file {path!r}"))
    media_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
    return func.HttpResponse(file.read_bytes(), mimetype=media_type, headers={"Cache-Control": "no-cache"})


def health(req: func.HttpRequest) -> func.HttpResponse:
    return json_response(http.Health(status="ok"))


def openapi_document(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(openapi.document_bytes(), mimetype=http.JSON)


async def purge_history(client: df.DurableOrchestrationClient, timer: func.TimerRequest) -> int:
    """Purges the history of finished appends older than VAULT_PURGE_AFTER_HOURS (orchestrations
    only: running ones, and the entities, which hold no history worth purging, are kept). Each
    hourly run purges those created in the few hours before the cut-off, so that a run deletes
    about an hour's appends, and one that failed is made up by the next; the first run of each
    UTC day sweeps everything older. A purge that times out or fails is logged and left to the
    next run. Once purged, a retried Idempotency-Key is still recognised by the stream itself while
    it is among the stream's last 1,024 batches."""
    hours = float(setting("VAULT_PURGE_AFTER_HOURS") or 24)
    now = datetime.now(UTC)
    until = now - timedelta(hours=hours)
    since = until - PURGE_WINDOW if _ran_today(timer, now) else datetime(2000, 1, 1, tzinfo=UTC)
    try:
        result = await client.purge_instance_history_by(
            created_time_from=since, created_time_to=until, runtime_status=list(FINISHED)
        )
    except Exception as error:  # the SDK's session gives up after 240 s; the runtime may fail it
        log.warning(
            "purging finished appends created %s to %s did not complete (%s: %s); the next run goes on",
            since.isoformat(),
            until.isoformat(),
            type(error).__name__,
            error,
        )
        return 0
    log.info("purged %d finished append orchestrations", result.instances_deleted)
    return result.instances_deleted


def _ran_today(timer: func.TimerRequest, now: datetime) -> bool:
    """Whether the timer last ran on the same UTC day (the runtime says when, in the schedule
    status of its monitor); not on the first run, or when it does not say."""
    last = (getattr(timer, "schedule_status", None) or {}).get("Last")
    try:
        when = datetime.fromisoformat(last) if isinstance(last, str) else None
    except ValueError:
        when = None
    if when is None:
        return False
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    return when.astimezone(UTC).date() == now.date()


def _encode(content_type: str | None, body: bytes) -> tuple[bytes, str]:
    """The batch in the binary encoding the entity reads, and its digest."""
    batch = transfer.encode_binary(http.parse_batch(content_type, body))
    return batch, hashlib.sha256(batch).hexdigest()


async def _outcome(
    client: df.DurableOrchestrationClient, stream: str, key: str, deadline: float
) -> func.HttpResponse:
    """The append's answer once its orchestration finished by `deadline` (the event loop's
    clock), else 202. The status is asked for at growing intervals (50 ms to 1 s): each ask is a
    storage read."""
    instance = instance_id(stream, key)
    loop = asyncio.get_running_loop()
    delay = 0.05
    while True:
        try:
            status = await _status(client, instance)
            if status is None:  # purged or never created: nothing will answer for this append
                raise _not_started("the runtime no longer knows it")
            runtime, output = status.runtime_status, status.output
        except RuntimeUnavailable:
            runtime, output = None, None  # this ask failed, the append goes on: ask again
        if runtime == df.OrchestrationRuntimeStatus.Completed:
            return _from_entity(stream, output)
        if runtime in FINISHED:
            raise RuntimeError(f"the append orchestration {instance} ended {runtime.value}")
        remaining = deadline - loop.time()
        if remaining <= 0:
            body, location = pending_answer(stream, key)
            return func.HttpResponse(
                body, status_code=202, headers={"Location": location}, mimetype=http.JSON
            )
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 1.5, 1.0)


class RuntimeUnavailable(http.ProblemError):
    """The Durable runtime failed a request of the client's (its storage, say): it may pass."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            503, "runtime-unavailable", "The Durable runtime is unavailable", detail, **{"Retry-After": "2"}
        )


async def _status(
    client: df.DurableOrchestrationClient, instance: str
) -> df.models.DurableOrchestrationStatus | None:
    """The orchestration's status, or None when there is no such instance. The SDK answers a
    status object for every outcome, falsy both for an unknown instance (404) and for a query
    the runtime failed (500, its error in the object's attributes): the second is raised."""
    status = await client.get_status(instance)
    if status:
        return status
    failure = getattr(status, "ExceptionMessage", None) or getattr(status, "Message", None)
    if failure:
        raise RuntimeUnavailable(
            f"the Durable runtime could not tell the append's status ({failure}); "
            "retry with the same Idempotency-Key"
        )
    return None


def _not_started(why: str) -> http.ProblemError:
    return http.unavailable(
        "append-not-started",
        "The append was not started",
        f"the vault could not start the append: {why}; nothing was appended, "
        "send the batch again with the same Idempotency-Key",
    )


def _input_of(status: df.models.DurableOrchestrationStatus | None) -> dict[str, Any] | None:
    """An orchestration's input. The client sends inputs as JSON text, so the status may carry
    that text rather than the object."""
    value = status.input_ if status is not None else None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


def _should_start(status: df.models.DurableOrchestrationStatus | None) -> bool:
    """Start an orchestration for this key unless one is running or has a final answer (an
    append, or a problem with the request). One that failed, or ended on a problem of the
    vault's (5xx), runs again: the batch id keeps the append exactly once whatever happened
    before."""
    runtime = status.runtime_status if status is not None else None
    if runtime is None or runtime in (
        df.OrchestrationRuntimeStatus.Failed,
        df.OrchestrationRuntimeStatus.Terminated,
    ):
        return True
    if runtime == df.OrchestrationRuntimeStatus.Completed:
        output = status.output if isinstance(status.output, dict) else {}  # type: ignore[union-attr]
        problem = output.get("problem")
        return bool(output.get("retry")) or (isinstance(problem, dict) and problem.get("status", 0) >= 500)
    return False


def _from_entity(stream: str, output: dict[str, Any]) -> func.HttpResponse:
    if "problem" in output:
        problem = output["problem"]
        headers = {"Retry-After": str(output["retry_after"])} if output.get("retry_after") else {}
        return func.HttpResponse(
            json.dumps(problem), status_code=problem["status"], headers=headers, mimetype=http.PROBLEM_JSON
        )
    return func.HttpResponse(appended_body(stream, output["position"], output["offsets"]), mimetype=http.JSON)


def _stage(name: str, batch: bytes) -> str:
    staging().write_file(name, batch)
    return name


# --- the orchestration ---------------------------------------------------------------------------


def append_orchestration(context: df.DurableOrchestrationContext) -> Generator[Any, Any, dict[str, Any]]:
    """Calls the stream's entity, and again after a durable timer while the answer is a problem
    that may pass. Durable replays repeat the calls' results, never the appends."""
    payload = context.get_input(expected_type=dict)
    entity = df.EntityId(ENTITY, payload["stream"])
    for delay in (*RETRY_DELAYS, None):
        try:
            result = yield context.call_entity(entity, "append", payload)
        except Exception as error:  # the runtime failed the whole batch (a function timeout, say)
            result = _problem(RuntimeError(f"the stream's entity failed the operation: {error}"), retry=True)
        if not result.get("retry") or delay is None:
            return result
        yield context.create_timer(context.current_utc_datetime + timedelta(seconds=delay))
    raise AssertionError("unreachable: the last delay is None, where the loop returns")


# --- the entity ----------------------------------------------------------------------------------


async def stream_writer(context: func.EntityContext) -> str:
    """The stream's one writer. Its batch blocks on storage for up to ENTITY_BUDGET_SECONDS, on
    a pool of its own: for Python the extension dispatches entity batches and orchestrator
    replays together (maxConcurrentOrchestratorFunctions covers both), and a sync entity would
    hold the worker's thread pool, which the orchestrator's replays need, for that long."""
    return await asyncio.get_running_loop().run_in_executor(_entity_pool(), _entity_batch, context.body)


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
        outcomes = [_problem(error, retry=True) for _ in operations]
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
    return EntityState(results=results, signals=[], entity_exists=True, state=state).to_json_string()


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
            answers.append(_problem(error, retry=False))
            continue
        answers.append(appends[-1])
    for chunk in _rounds(appends):
        if time.monotonic() > deadline:
            for append in chunk:
                append.outcome = _problem(TimeoutError("deferred: the entity's batch ran long"), retry=True)
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
    list(_pool().map(_read, appends))
    ready = [a for a in appends if a.outcome is None and a.messages is not None]
    for attempt in range(2 if ready else 0):
        try:
            writer = owners().writer(stream)
            outcomes = writer.append_all([Batch(a.messages or [], a.payload["batch_id"]) for a in ready])
        except Exception as error:  # the stream could not be opened, or taken over
            outcomes = [error] * len(ready)
        fenced = [a for a, o in zip(ready, outcomes, strict=True) if isinstance(o, FencedError)]
        for append, outcome in zip(ready, outcomes, strict=True):
            append.outcome = _appended(outcome) if isinstance(outcome, AppendResult) else _problem(outcome)
        if not fenced or attempt:
            break
        # Another writer took the stream over since this worker last wrote. The runtime has just
        # handed this batch to this worker, so it owns the entity now: take the stream back once.
        owners().drop(stream)
        ready = fenced
    _missing_staged(stream, appends)
    committed = [
        a.payload["staged"] for a in appends if "staged" in a.payload and "position" in (a.outcome or {})
    ]
    list(_pool().map(_delete_staged, committed))


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
        append.outcome = _problem(error)
        return
    if hashlib.sha256(body).hexdigest() != payload["digest"]:
        append.outcome = _problem(
            RuntimeError(f"the staged batch {payload.get('staged')} is damaged"), retry=False
        )
        return
    try:
        append.messages = http.parse_batch(http.BINARY_BATCH, body)
    except Exception as error:
        append.outcome = _problem(error, retry=False)


def _missing_staged(stream: str, appends: list[_Append]) -> None:
    """A staged batch is deleted once committed; if the runtime delivers its operation again after
    that, the stream's record of the batch id answers it."""
    for append in appends:
        if append.messages is not None or append.outcome is not None:
            continue
        try:
            found = owners().writer(stream).find(append.payload["batch_id"])
        except Exception as error:
            append.outcome = _problem(error)
            continue
        stored = [(m.key, m.value) for m in found[1]] if found is not None else []
        if (
            found is not None
            and hashlib.sha256(transfer.encode_binary(stored)).hexdigest() == append.payload["digest"]
        ):
            append.outcome = _appended(found[0])
        else:
            append.outcome = _problem(
                RuntimeError(f"the staged batch {append.payload['staged']} is gone; send the batch again"),
                retry=False,
            )


def _appended(result: AppendResult) -> dict[str, Any]:
    return {"position": result.position, "offsets": result.offsets}


def _problem(error: BaseException, *, retry: bool | None = None) -> dict[str, Any]:
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


@functools.cache
def owners() -> Writers:
    """This worker process's writers, one per stream whose entity ran here, each opened with
    takeover: the runtime runs an entity only where it owns it now."""
    return Writers(store(), lease_seconds=int(setting("VAULT_LEASE_SECONDS") or 60), takeover=True)


@functools.cache
def _entity_pool() -> ThreadPoolExecutor:
    """As many threads as the runtime runs work items at once on an instance."""
    threads = int(_durable_settings().get("maxConcurrentOrchestratorFunctions", 10 * (os.cpu_count() or 1)))
    return ThreadPoolExecutor(threads, thread_name_prefix="vault-entity")


@functools.cache
def _pool() -> ThreadPoolExecutor:
    """Reads and deletes of staged batches, in parallel."""
    return ThreadPoolExecutor(8, thread_name_prefix="vault-staging")
