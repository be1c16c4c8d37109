"""Message Vault on Azure Functions: the table of contents. Each function delegates to
vault_core.functions (HTTP handlers, the orchestration, the entity); the `stream_writer` entity is
the only code in the app that appends."""

from collections.abc import Callable, Generator
from typing import Any

import azure.durable_functions as df
import azure.functions as func

from vault_core import routes
from vault_core.functions import entity, http_handlers, orchestration, telemetry

telemetry.export_metrics()  # to Application Insights, where it is configured
app = df.DFApp(http_auth_level=func.AuthLevel.FUNCTION)


def http_route(route: routes.Route) -> Callable[[Callable[..., Any]], Any]:
    """An HTTP function at a route of the table that vault serve and the OpenAPI document share:
    a function key is asked for unless the route is public."""
    public = {"auth_level": func.AuthLevel.ANONYMOUS} if route.public else {}
    return app.route(route=route.functions_route, methods=list(route.methods), **public)


@http_route(routes.PUBLISH)
@app.durable_client_input(client_name="client")
async def publish(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """Validate a batch, hand it to the stream's entity, answer 200 with its offsets (or 202)."""
    return await http_handlers.publish(req, client)


@http_route(routes.BATCH_STATUS)
@app.durable_client_input(client_name="client")
async def batch_status(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """Where a 202 points: the append's result once committed."""
    return await http_handlers.batch_status(req, client)


@http_route(routes.STREAM_INFO)
def stream_info(req: func.HttpRequest) -> func.HttpResponse:
    """The stream's position and a read-only SAS URL for it."""
    return http_handlers.stream_info(req)


@http_route(routes.LIST_STREAMS)
def list_streams(req: func.HttpRequest) -> func.HttpResponse:
    """Every stream with its position."""
    return http_handlers.list_streams(req)


@http_route(routes.STREAM_LOG)
def stream_log(req: func.HttpRequest) -> func.HttpResponse:
    """The log's bytes by Range, for a store without read URLs of its own (a development directory)."""
    return http_handlers.stream_log(req)


@http_route(routes.LIST_GROUPS)
def list_groups(req: func.HttpRequest) -> func.HttpResponse:
    """Every consumer group's lag on each stream it reads."""
    return http_handlers.list_groups(req)


@http_route(routes.CONSOLE)
def console(req: func.HttpRequest) -> func.HttpResponse:
    """The browser console's static files; the page asks for a function key to call the API."""
    return http_handlers.console(req)


@http_route(routes.HEALTH)
def health(req: func.HttpRequest) -> func.HttpResponse:
    return http_handlers.health(req)


@http_route(routes.OPENAPI)
def openapi(req: func.HttpRequest) -> func.HttpResponse:
    """The HTTP API as an OpenAPI 3.1 document, readable without a key."""
    return http_handlers.openapi_document(req)


@app.orchestration_trigger(context_name="context")
def append_batch(context: df.DurableOrchestrationContext) -> Generator[Any, Any, dict[str, Any]]:
    """Calls the stream's entity, retrying with durable timers while the problem may pass; its
    instance id is the stream and the Idempotency-Key."""
    return orchestration.append_orchestration(context)


# The entity takes its operation batch whole (the SDK's entity_trigger would hand it one operation
# at a time): the same entityTrigger binding, declared directly.
@app.function_name("stream_writer")
@app.generic_trigger(arg_name="context", type="entityTrigger")
async def stream_writer(context: func.EntityContext) -> str:
    """One per stream (entity key = stream name): appends each batch of operations together, on
    threads of its own (the worker's pool is left to the orchestrator's replays)."""
    return await entity.stream_writer(context)


@app.timer_trigger(schedule="0 17 * * * *", arg_name="timer")
@app.durable_client_input(client_name="client")
async def purge_history(timer: func.TimerRequest, client: df.DurableOrchestrationClient) -> None:
    """Hourly: forget finished appends older than VAULT_PURGE_AFTER_HOURS."""
    await orchestration.purge_history(client, timer)
