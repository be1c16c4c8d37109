"""`vault serve`: the HTTP contract of http_models on one machine, with one in-process writer per
stream (the local analogue of the Function App's durable entity). Concurrent requests for a
stream share its writer, whose group commit turns them into few writes, each batch still atomic."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import http_models as http
from . import metrics, openapi
from . import routes as api
from .consumer import observe_group_lags
from .service import (
    CONSOLE,
    Writers,
    appended_body,
    describe_groups,
    describe_stream,
    pending_answer,
    problem_for,
    read_url_lifetime,
    segment_bytes_setting,
    serve_log,
    summarize_streams,
)
from .store import Store
from .writer import AppendResult

log = logging.getLogger("vault.serve")
requests = logging.getLogger("vault.serve.requests")  # one line per request
FINISHED_KEPT = 10_000  # outcomes of 202-answered appends kept for their status location
BODY_BUDGET = 64 * 1024 * 1024  # request bodies held at once (four of the largest)


def create_app(
    store: Store,
    *,
    api_key: str | None = None,
    wait_seconds: float = 30.0,
    lease_seconds: int = 60,
    takeover: bool = False,
    body_budget: int = BODY_BUDGET,
    read_url_seconds: int | None = None,
) -> ASGIApp:
    """The ASGI app. `wait_seconds`: how long a POST waits for its commit before answering 202.
    `lease_seconds`, `takeover`: how the writers hold their streams (see `Store.writer`).
    `body_budget`: the request bodies held at once, in bytes; past it a POST is answered 503.
    `read_url_seconds`: how long the read URLs of GET /api/streams/{stream} last; by default
    VAULT_READ_URL_SECONDS (3600 when unset; InvalidSetting, a ValueError, if it is no number of
    seconds).

    A publish, the hot path, is handled on plain ASGI (no router, request or response objects:
    they cost as much as the append); everything else goes through Starlette."""
    read_urls_last = read_url_lifetime(
        os.environ.get("VAULT_READ_URL_SECONDS") if read_url_seconds is None else read_url_seconds
    )
    writers = Writers(
        store,
        lease_seconds=lease_seconds,
        takeover=takeover,
        segment_bytes=segment_bytes_setting(os.environ.get("VAULT_SEGMENT_BYTES")),
    )
    bodies = _BodyBudget(body_budget)
    finished: OrderedDict[tuple[str, str], asyncio.Task[AppendResult]] = OrderedDict()

    def authorize(headers: Mapping[str, str], code: str | None) -> None:
        if api_key is None:
            return
        given = headers.get(http.FUNCTION_KEY_HEADER) or code or ""
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise http.unauthorized()

    def pending(stream: str, token: str) -> tuple[int, bytes, dict[str, str]]:
        body, location = pending_answer(stream, token)
        return 202, body, {"Location": location}

    async def publish(stream: str, scope: Scope, receive: Receive) -> tuple[int, bytes, dict[str, str]]:
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]
        }
        authorize(headers, parse_qs(scope["query_string"].decode("latin-1")).get("code", [None])[0])
        stream = http.check_stream(stream)
        key = http.check_idempotency_key(headers.get(http.IDEMPOTENCY_KEY.lower()))
        declared = http.check_content_length(headers.get("content-length"))
        release = bodies.take(http.MAX_BODY_BYTES if declared is None else declared)
        try:
            batch = http.prepare_body(headers.get("content-type"), await _receive_body(receive), key)
            task = asyncio.ensure_future(asyncio.to_thread(writers.append, stream, batch))
        except BaseException:
            release()
            raise
        task.add_done_callback(lambda _: release())  # the body is held until its append ends
        try:
            result = await asyncio.wait_for(asyncio.shield(task), wait_seconds)
        except TimeoutError:
            # Only appends answered 202 are remembered, for their status location.
            token = key or uuid.uuid4().hex
            finished[(stream, token)] = task
            while len(finished) > FINISHED_KEPT:
                finished.popitem(last=False)
            return pending(stream, token)
        return 200, appended_body(stream, result.position, result.offsets), {}

    async def batch_status(request: Request) -> Response:
        authorize(request.headers, request.query_params.get("code"))
        stream = http.check_stream(request.path_params["stream"])
        task = finished.get((stream, request.path_params["token"]))
        if task is None:
            raise http.unknown_batch()
        if not task.done():
            status, body, headers = pending(stream, request.path_params["token"])
            return Response(body, status, headers=headers, media_type=http.JSON)
        result = task.result()
        return Response(appended_body(stream, result.position, result.offsets), media_type=http.JSON)

    async def stream_info(request: Request) -> Response:
        authorize(request.headers, request.query_params.get("code"))
        stream = http.check_stream(request.path_params["stream"])
        return _json(await asyncio.to_thread(describe_stream, store, stream, lifetime=read_urls_last))

    async def list_streams(request: Request) -> Response:
        authorize(request.headers, request.query_params.get("code"))
        return _json(await asyncio.to_thread(summarize_streams, store))

    async def stream_log(request: Request) -> Response:
        authorize(request.headers, request.query_params.get("code"))
        stream = http.check_stream(request.path_params["stream"])
        wanted, head = request.headers.get("range"), request.method == "HEAD"
        status, body, headers = await asyncio.to_thread(serve_log, store, stream, wanted, head)
        return Response(body, status, headers=headers, media_type="application/octet-stream")

    async def list_groups(request: Request) -> Response:
        authorize(request.headers, request.query_params.get("code"))
        return _json(await asyncio.to_thread(describe_groups, store))

    async def health(request: Request) -> Response:
        return _json(http.Health(status="ok"))

    async def openapi_document(request: Request) -> Response:
        return Response(openapi.document_bytes(), media_type=http.JSON)

    async def metrics_text(request: Request) -> Response:
        """The instruments in Prometheus' text format: consumer lag is read from the store now."""
        authorize(request.headers, request.query_params.get("code"))
        body, content_type = await asyncio.to_thread(metrics.prometheus_text)
        return Response(body, headers={"Content-Type": content_type})

    def route(spec: api.Route, handler: Callable[[Request], Awaitable[Response]]) -> Route:
        return Route(spec.path, _answered(handler), methods=list(spec.methods))

    routes = Starlette(
        routes=[
            route(api.HEALTH, health),
            route(api.OPENAPI, openapi_document),
            route(api.LIST_STREAMS, list_streams),
            route(api.STREAM_INFO, stream_info),
            route(api.BATCH_STATUS, batch_status),
            route(api.STREAM_LOG, stream_log),
            route(api.LIST_GROUPS, list_groups),
            # vault serve's own: the Function App exports its metrics to Application Insights.
            Route("/metrics", _answered(metrics_text), methods=["GET"]),
            # The console: static files that read the API and, through it, the logs.
            Route("/", lambda request: RedirectResponse(f"{api.CONSOLE.prefix}/"), methods=["GET"]),
            Mount(api.CONSOLE.prefix, StaticFiles(directory=CONSOLE, html=True)),
        ],
        exception_handlers={404: _not_found, 405: _not_allowed},
        lifespan=lambda app: _closing(writers, observe_group_lags(store)),
    )
    publish_prefix = api.PUBLISH.prefix + "/"  # a publish is answered before the router

    async def handle(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and scope["method"] == "POST" and path.startswith(publish_prefix):
            stream = path[len(publish_prefix) :]
            if "/" not in stream:
                await _answer(send, scope, lambda: publish(stream, scope, receive))
                return
        await routes(scope, receive, send)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        """Each request logged in one line once answered: who, what, the status, how long. The
        path only: its query string may carry the key (?code=)."""
        if scope["type"] != "http":
            await handle(scope, receive, send)
            return
        started, status = time.perf_counter(), 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await handle(scope, receive, sending)
        finally:
            client = scope.get("client") or ("-", 0)
            took = (time.perf_counter() - started) * 1000
            answered = status or "-"  # nothing was sent: the client went away
            requests.info("%s %s %s %s %.1f ms", client[0], scope["method"], scope["path"], answered, took)

    return app


async def _answer(
    send: Send, scope: Scope, handle: Callable[[], Awaitable[tuple[int, bytes, dict[str, str]]]]
) -> None:
    """Send what `handle` answers, or the problem for the error it raised."""
    try:
        status, body, headers = await handle()
        media_type = http.JSON
    except ClientDisconnect:
        log.warning(
            "%s %s: the client went away before sending its whole body", scope["method"], scope["path"]
        )
        return  # nobody is there to read an answer
    except Exception as error:
        problem = problem_for(error)
        status, body, headers, media_type = problem.status, problem.body(), problem.headers, http.PROBLEM_JSON
    raw = [(b"content-type", media_type.encode()), (b"content-length", str(len(body)).encode())]
    raw += [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def _receive_body(receive: Receive) -> bytes:
    """The request body, refused as soon as it grows past the limit rather than read whole."""
    parts, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        part = message.get("body", b"")
        size += len(part)
        if size > http.MAX_BODY_BYTES:
            raise http.body_too_large()
        parts.append(part)
        if not message.get("more_body", False):
            return b"".join(parts)


def _answered(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """Every error a route meets becomes its problem response here, in the route: an error left to
    Starlette's last-resort handler would also close the keep-alive connection without saying so,
    and the client's next request on it would get no answer."""

    async def route(request: Request) -> Response:
        try:
            return await handler(request)
        except ClientDisconnect:
            log.warning(
                "%s %s: the client went away before sending its whole body", request.method, request.url.path
            )
            return Response(status_code=400)  # nobody is there to read it
        except Exception as error:
            return await _problem_response(request, error)

    return route


class _BodyBudget:
    """Bytes of request bodies held at once (each body until its append ends): past the budget, a
    POST is turned away with 503 before its body is read, rather than held in memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0  # only touched on the event loop

    def take(self, size: int) -> Callable[[], None]:
        if self.held and self.held + size > self.limit:
            raise http.unavailable(
                "server-busy",
                "The server is busy",
                f"{self.held:,} bytes of requests are being appended (the limit is {self.limit:,}); "
                "retry shortly",
                retry_after=1,
            )
        self.held += size
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.held -= size

        return release


@contextlib.asynccontextmanager
async def _closing(writers: Writers, unobserve: Callable[[], None]) -> AsyncIterator[None]:
    yield
    unobserve()
    writers.close()  # give the leases back when the server stops


def _json(model: Any, status: int = 200) -> Response:
    return Response(model.model_dump_json(), status, media_type=http.JSON)


async def _problem_response(request: Request, error: Exception) -> Response:
    problem = problem_for(error)
    return Response(problem.body(), problem.status, headers=problem.headers, media_type=http.PROBLEM_JSON)


async def _not_found(request: Request, error: Exception) -> Response:
    return await _problem_response(request, http.not_found(f"no route for {request.url.path}"))


async def _not_allowed(request: Request, error: Exception) -> Response:
    # A 405 names the methods the resource takes (RFC 9110): those of Starlette's route, and POST on
    # a stream, which is answered before the router.
    methods = [m for m in (getattr(error, "headers", None) or {}).get("Allow", "").split(", ") if m]
    stream = request.url.path.removeprefix(api.PUBLISH.prefix + "/")
    if stream != request.url.path and "/" not in stream:
        methods.append("POST")
    return await _problem_response(request, http.not_allowed(request.method, methods))
