"""The host's half of binding conversion: what the Functions host puts in an InvocationRequest for
each of the app's bindings, and what it takes out of the InvocationResponse. The worker library
does the other half (TypedData to azure.functions objects and back).

- httpTrigger: an RpcHttp (method, full URL, headers, query, route parameters; the body as bytes,
  which the worker asked for with its RawHttpBodyBytes capability);
- orchestrationTrigger, entityTrigger, durableClient: the Durable extension's JSON text, as a
  string;
- timerTrigger: the timer's JSON (Schedule, ScheduleStatus with when it last ran, IsPastDue).
An answer is the function's return value: an RpcHttp for HTTP functions, JSON text for the
orchestrator and the entity; or, when the function raised, the exception's message."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tests.support.durable.channel import FunctionInfo
from tests.support.durable.rpc import protos


@dataclass(frozen=True)
class HttpCall:
    method: str
    url: str
    headers: dict[str, str]
    query: dict[str, str]
    route_params: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Answer:
    """What an invocation came to: a result (JSON text), an HTTP answer, or the error it raised."""

    result: str | None = None
    http: HttpAnswer | None = None
    error: str | None = None


def inputs(
    function: FunctionInfo,
    *,
    http: HttpCall | None = None,
    context: str | None = None,
    client: str | None = None,
    last_run: str | None = None,
) -> list[Any]:
    """The ParameterBindings for `function`'s input bindings."""
    bound = []
    for binding in function.bindings:
        if binding.get("direction", "IN").upper() != "IN":
            continue
        kind = binding["type"]
        if kind == "httpTrigger":
            assert http is not None, f"{function.name} needs an HTTP request"
            data = protos.TypedData(
                http=protos.RpcHttp(
                    method=http.method,
                    url=http.url,
                    headers=http.headers,
                    query=http.query,
                    params=http.route_params,
                    body=protos.TypedData(bytes=http.body),
                )
            )
        elif kind in ("orchestrationTrigger", "entityTrigger"):
            assert context is not None, f"{function.name} needs its trigger's payload"
            data = protos.TypedData(string=context)
        elif kind == "durableClient":
            assert client is not None, f"{function.name} needs the durable client binding"
            data = protos.TypedData(string=client)
        elif kind == "timerTrigger":
            # The schedule monitor's record of the timer: when it last ran (none the first time).
            status = {"Last": last_run, "Next": last_run, "LastUpdated": last_run} if last_run else None
            timer = {"Schedule": {"AdjustForDST": True}, "ScheduleStatus": status, "IsPastDue": False}
            data = protos.TypedData(json=json.dumps(timer))
        else:
            raise NotImplementedError(f"the stand-in has no {kind} binding ({function.name})")
        bound.append(protos.ParameterBinding(name=binding["name"], data=data))
    return bound


def answer(response: Any) -> Answer:
    """The InvocationResponse as the host reads it."""
    if response.result.status != protos.StatusResult.Success:
        return Answer(error=response.result.exception.message)
    value = response.return_value
    kind = value.WhichOneof("data")
    if kind == "http":
        body = value.http.body
        content = body.bytes if body.WhichOneof("data") == "bytes" else body.string.encode()
        return Answer(http=HttpAnswer(int(value.http.status_code or 200), dict(value.http.headers), content))
    if kind in ("json", "string"):
        return Answer(result=getattr(value, kind))
    if kind is None:
        return Answer()
    raise NotImplementedError(f"the stand-in reads no {kind} return value")
