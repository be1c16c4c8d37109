"""The Function App's HTTP functions: each validates its request and answers, and every error
any of them meets becomes its problem response in one place (`answered`)."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import logging
import mimetypes
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec
from urllib.parse import urlsplit

import azure.durable_functions as df
import azure.functions as func

from .. import http_models as http
from .. import openapi, transfer
from ..errors import BatchIdConflict
from ..service import (
    CONSOLE,
    appended_body,
    describe_groups,
    describe_stream,
    pending_answer,
    problem_for,
    read_url_lifetime,
    serve_log,
    summarize_streams,
)
from . import entity, orchestration
from .partitions import instance_id
from .settings import setting, store

log = logging.getLogger("vault.functions")
P = ParamSpec("P")


# Azure's front end (its load balancer) drops an HTTP request it has had no answer to for 230 s,
# whatever the function timeout. A POST answers, 202 at the latest, within this many seconds of
# its arrival (parsing and staging included); the rest is for the host's time before the function
# starts and after it answers.
MAX_WAIT_SECONDS = 200.0


def problem_response(error: BaseException) -> func.HttpResponse:
    problem = problem_for(error)
    return func.HttpResponse(
        problem.body(), status_code=problem.status, headers=problem.headers, mimetype=http.PROBLEM_JSON
    )


def json_response(model: Any, status: int = 200, **headers: str) -> func.HttpResponse:
    return func.HttpResponse(model.model_dump_json(), status_code=status, headers=headers, mimetype=http.JSON)


def answered(handler: Callable[P, func.HttpResponse]) -> Callable[P, func.HttpResponse]:
    """The handler, with every error it meets answered as its problem (service.problem_for)."""

    @functools.wraps(handler)
    def answer(*args: P.args, **kwargs: P.kwargs) -> func.HttpResponse:
        try:
            return handler(*args, **kwargs)
        except Exception as error:
            return problem_response(error)

    return answer


def answered_async(
    handler: Callable[P, Awaitable[func.HttpResponse]],
) -> Callable[P, Awaitable[func.HttpResponse]]:
    """`answered`, for a handler that awaits (the runtime's client)."""

    @functools.wraps(handler)
    async def answer(*args: P.args, **kwargs: P.kwargs) -> func.HttpResponse:
        try:
            return await handler(*args, **kwargs)
        except Exception as error:
            return problem_response(error)

    return answer


@answered_async
async def publish(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    arrived = asyncio.get_running_loop().time()
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
        if len(batch) <= entity.INLINE_BYTES:
            payload["inline"] = base64.b64encode(batch).decode()
        else:
            payload["staged"] = await asyncio.to_thread(entity.stage, f"{stream}/{key}/{digest}", batch)
        try:
            await client.start_new(orchestration.ORCHESTRATOR, instance, payload)
        except Exception as error:
            # A retry of this request may have started it first (the runtime refuses a second
            # start of a running instance): then wait for that one. Otherwise the runtime did
            # not start the append (storage trouble, throttling): nothing will append it.
            if await _status(client, instance) is None:
                log.warning("the Durable runtime refused to start %s: %s", instance, error)
                raise _not_started("the Durable runtime refused to start it") from error
    wait = min(float(setting("VAULT_WAIT_SECONDS") or 30), MAX_WAIT_SECONDS)
    return await _outcome(client, stream, key, arrived + wait)


@answered_async
async def batch_status(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    stream = http.check_stream(req.route_params.get("stream", ""))
    key = http.check_idempotency_key(req.route_params.get("token"))
    status = await _status(client, instance_id(stream, key)) if key else None
    earlier = _input_of(status)
    if earlier is None or earlier.get("stream") != stream:
        raise http.unknown_batch()
    return await _outcome(client, stream, key, 0.0)  # type: ignore[arg-type]


@answered
def stream_info(req: func.HttpRequest) -> func.HttpResponse:
    stream = http.check_stream(req.route_params.get("stream", ""))
    lifetime = read_url_lifetime(setting("VAULT_READ_URL_SECONDS"))
    return json_response(describe_stream(store(), stream, lifetime=lifetime))


@answered
def list_streams(req: func.HttpRequest) -> func.HttpResponse:
    return json_response(summarize_streams(store()))


@answered
def stream_log(req: func.HttpRequest) -> func.HttpResponse:
    stream = http.check_stream(req.route_params.get("stream", ""))
    status, body, headers = serve_log(store(), stream, req.headers.get("range"), req.method == "HEAD")
    media_type = "application/octet-stream"
    return func.HttpResponse(body, status_code=status, headers=headers, mimetype=media_type)


@answered
def list_groups(req: func.HttpRequest) -> func.HttpResponse:
    return json_response(describe_groups(store()))


@answered
def console(req: func.HttpRequest) -> func.HttpResponse:
    """A file of the console (index.html for the folder itself); nothing outside it."""
    url = urlsplit(req.url)
    if not req.route_params.get("path") and not url.path.endswith("/"):
        # The page's files are named relative to the folder: .../console must become .../console/.
        return func.HttpResponse(status_code=301, headers={"Location": f"{url.path}/"})
    path = req.route_params.get("path") or "index.html"
    file = (CONSOLE / path).resolve()
    if not file.is_relative_to(CONSOLE) or not file.is_file():
        raise http.not_found(f"no console file {path!r}")
    media_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
    return func.HttpResponse(file.read_bytes(), mimetype=media_type, headers={"Cache-Control": "no-cache"})


@answered
def health(req: func.HttpRequest) -> func.HttpResponse:
    return json_response(http.Health(status="ok"))


@answered
def openapi_document(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(openapi.document_bytes(), mimetype=http.JSON)


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
        if runtime in orchestration.FINISHED:
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
