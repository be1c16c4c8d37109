"""The Function App's logic, behind the thin function_app.py: HTTP functions validate a batch
and hand it to an orchestration (instance id = the Idempotency-Key), which calls the stream's
durable entity; the entity is the only code in the app that appends, through the vault_core
writer. Imported only by the Function App (it needs azure-functions and its durable extension).

Settings (app settings, or local.settings.json when run with Core Tools):
    VAULT_STORE               where streams live: a connection string, an account URL (Entra ID
                              via DefaultAzureCredential) or, for development, a directory;
                              default: the AzureWebJobsStorage connection string
    VAULT_CONTAINER           the streams' blob container (default "vault")
    VAULT_STAGING_CONTAINER   where large batches wait for their entity (default "vault-staging")
    VAULT_WAIT_SECONDS        how long a POST waits for its commit before answering 202 (30)
    VAULT_LEASE_SECONDS       the writers' blob lease (15-60, default 60)
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import os
import uuid
from typing import Any

import azure.durable_functions as df
import azure.functions as func

from . import http_models as http
from .errors import BatchIdConflict
from .server import Writers, describe_stream, problem_for, summarize_streams
from .stores import open_store
from .stores.base import Store

ORCHESTRATOR = "append_batch"
ENTITY = "stream_writer"
# Batches up to this size ride inside the orchestration input; larger ones are staged in blob
# storage (a claim check) so that they never travel through Durable's own queue messages.
INLINE_BYTES = 32 * 1024
POLL_SECONDS = 0.05


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
def writers() -> Writers:
    """This worker process's writers, one per stream, each holding its stream's lease."""
    return Writers(store(), lease_seconds=int(setting("VAULT_LEASE_SECONDS", "60") or 60))


@functools.cache
def staging() -> Store:
    """Where staged batches go: a container of their own beside the streams."""
    return _open(setting("VAULT_STAGING_CONTAINER") or "vault-staging")


def problem_response(error: BaseException) -> func.HttpResponse:
    problem = problem_for(error)
    return func.HttpResponse(
        problem.body(), status_code=problem.status, headers=problem.headers, mimetype=http.PROBLEM_JSON
    )


def json_response(model: Any, status: int = 200, **headers: str) -> func.HttpResponse:
    return func.HttpResponse(model.model_dump_json(), status_code=status, headers=headers, mimetype=http.JSON)


# --- HTTP functions -------------------------------------------------------------------------


async def publish(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    try:
        stream = http.check_stream(req.route_params.get("stream", ""))
        key = http.check_idempotency_key(req.headers.get(http.IDEMPOTENCY_KEY)) or uuid.uuid4().hex
        http.check_content_length(req.headers.get("content-length"))
        messages = http.parse_batch(req.headers.get("content-type"), req.get_body())
        batch = http.encode_binary(messages)
        digest = hashlib.sha256(batch).hexdigest()
        status = await client.get_status(key)
        earlier = _input_of(status)
        if earlier and earlier.get("stream") == stream and earlier.get("digest") != digest:
            raise BatchIdConflict(f"Idempotency-Key {key!r} was already used for a different batch")
        if _should_start(status):
            payload: dict[str, Any] = {"stream": stream, "batch_id": key, "digest": digest}
            if len(batch) <= INLINE_BYTES:
                payload["inline"] = base64.b64encode(batch).decode()
            else:
                payload["staged"] = await asyncio.to_thread(_stage, f"{stream}/{key}/{digest}", batch)
            await client.start_new(ORCHESTRATOR, key, payload)
        wait = float(setting("VAULT_WAIT_SECONDS", "30") or 30)
        return await _outcome(client, stream, key, wait)
    except Exception as error:
        return problem_response(error)


async def batch_status(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    try:
        stream = http.check_stream(req.route_params.get("stream", ""))
        key = http.check_idempotency_key(req.route_params.get("token"))
        if key is None or not await client.get_status(key):
            raise http.ProblemError(404, "not-found", "Unknown batch", "no append is known at this location")
        return await _outcome(client, stream, key, 0)
    except Exception as error:
        return problem_response(error)


def stream_info(req: func.HttpRequest) -> func.HttpResponse:
    try:
        return json_response(describe_stream(store(), http.check_stream(req.route_params.get("stream", ""))))
    except Exception as error:
        return problem_response(error)


def list_streams(req: func.HttpRequest) -> func.HttpResponse:
    try:
        return json_response(summarize_streams(store()))
    except Exception as error:
        return problem_response(error)


def health(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(json.dumps({"status": "ok"}), mimetype=http.JSON)


async def _outcome(
    client: df.DurableOrchestrationClient, stream: str, key: str, wait: float
) -> func.HttpResponse:
    """The append's answer once its orchestration completed within `wait` seconds, else 202."""
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        status = await client.get_status(key)
        runtime = status.runtime_status if status else None
        if runtime == df.OrchestrationRuntimeStatus.Completed:
            return _from_entity(stream, status.output)
        if runtime in (df.OrchestrationRuntimeStatus.Failed, df.OrchestrationRuntimeStatus.Terminated):
            raise RuntimeError(f"the append orchestration {key} ended {runtime.value}")
        if asyncio.get_running_loop().time() >= deadline:
            location = http.batch_location(stream, key)
            body = json.dumps({"stream": stream, "status": location})
            return func.HttpResponse(
                body, status_code=202, headers={"Location": location}, mimetype=http.JSON
            )
        await asyncio.sleep(POLL_SECONDS)


def _input_of(status: df.models.DurableOrchestrationStatus | None) -> dict[str, Any] | None:
    """An earlier orchestration's input. The client sends inputs as JSON text, so the status
    may carry that text rather than the object."""
    value = status.input_ if status else None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


def _should_start(status: df.models.DurableOrchestrationStatus | None) -> bool:
    """Start an orchestration for this key unless one is running or has a final answer. An
    earlier attempt that failed, or ended in a retryable problem (the stream busy, say), is run
    again: the entity's batch id keeps the append exactly once whatever happened before."""
    runtime = status.runtime_status if status else None
    if runtime in (None, df.OrchestrationRuntimeStatus.Failed, df.OrchestrationRuntimeStatus.Terminated):
        return True
    if runtime == df.OrchestrationRuntimeStatus.Completed:
        problem = (status.output or {}).get("problem") if isinstance(status.output, dict) else None
        return bool(problem) and problem["status"] >= 500
    return False


def _from_entity(stream: str, output: dict[str, Any]) -> func.HttpResponse:
    if "problem" in output:
        problem = output["problem"]
        headers = {"Retry-After": str(output["retry_after"])} if output.get("retry_after") else {}
        return func.HttpResponse(
            json.dumps(problem), status_code=problem["status"], headers=headers, mimetype=http.PROBLEM_JSON
        )
    return json_response(http.AppendResponse(stream=stream, **output))


def _stage(name: str, batch: bytes) -> str:
    staging().put_object(name, batch)
    return name


# --- the orchestration and the entity ----------------------------------------------------------


def append_orchestration(context: df.DurableOrchestrationContext):  # type: ignore[no-untyped-def]
    """Calls the stream's entity once; Durable replays make the call, never the append, repeat."""
    payload = context.get_input(expected_type=dict)
    result = yield context.call_entity(
        df.EntityId(ENTITY, payload["stream"]), "append", payload, expected_type=dict
    )
    return result


def stream_writer(context: df.DurableEntityContext) -> None:
    """The stream's one writer. Its state keeps the lease it writes under; the batch id makes an
    operation the runtime re-executes after a crash append nothing the second time."""
    state = context.get_state(lambda: {"appends": 0})
    if context.operation_name != "append":
        context.set_result({"problem": _problem(ValueError(f"unknown operation {context.operation_name!r}"))})
        return
    payload = context.get_input(expected_type=dict)
    stream = context.entity_key
    try:
        if "inline" in payload:
            batch = base64.b64decode(payload["inline"])
        else:
            batch = staging().get_object(payload["staged"])
        messages = http.parse_batch(http.BINARY_BATCH, batch)
        result = writers().append(stream, messages, payload["batch_id"])
    except Exception as error:
        context.set_result(
            {"problem": _problem(error), "retry_after": problem_for(error).headers.get("Retry-After")}
        )
        return
    state["appends"] += 1
    state["position"] = result.position
    context.set_state(state)
    context.set_result({"position": result.position, "offsets": result.offsets})


def _problem(error: BaseException) -> dict[str, Any]:
    return problem_for(error).problem.model_dump()
