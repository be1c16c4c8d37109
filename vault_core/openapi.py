"""The HTTP contract as an OpenAPI 3.1 document, served by both hosts at /api/openapi.json. It is
built from http_models (its pydantic models, limits, header names and problem responses) and the
format's limits, never written by hand, so it cannot drift from what the hosts accept."""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

from pydantic.json_schema import models_json_schema

from . import format as fmt
from . import http_models as http
from . import routes as api

OPENAPI_VERSION = "3.1.0"
# The version of the HTTP contract (not of the package): raised when it changes incompatibly.
# 2: a JSON message's value is text, its bytes in base64 go in value_b64 (value was base64 in 1).
API_VERSION = "2"

_SCHEMAS = "#/components/schemas/"
_REQUEST_MODELS = (http.PublishRequest,)
_RESPONSE_MODELS = (
    http.AppendResponse,
    http.PendingAppend,
    http.StreamInfo,
    http.StreamList,
    http.GroupList,
    http.Health,
    http.Problem,
)

_BINARY_LAYOUT = (
    f"The binary batch encoding: messages back to back, each a key length (u8), a value length "
    f"(u32, little-endian), the UTF-8 key, then the value; no header, the count is what the body "
    f"holds. 1 to {fmt.MAX_BATCH_MESSAGES} messages, keys at most {fmt.MAX_KEY_BYTES} bytes, values "
    f"at most {fmt.MAX_VALUE_BYTES} bytes."
)


def document() -> dict[str, Any]:
    """The OpenAPI document, as a new dict each call."""
    return copy.deepcopy(_built())


@functools.cache
def document_bytes() -> bytes:
    """The document as the hosts send it (application/json)."""
    return json.dumps(_built(), separators=(",", ":")).encode()


@functools.cache
def _built() -> dict[str, Any]:
    _, schemas = models_json_schema(
        [(model, "validation") for model in _REQUEST_MODELS]
        + [(model, "serialization") for model in _RESPONSE_MODELS],
        ref_template=_SCHEMAS + "{model}",
    )
    stream = {"$ref": "#/components/parameters/stream"}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Message Vault",
            "version": API_VERSION,
            "description": (
                "Publish batches of messages to streams and find where to read them. Served by the "
                "Function App and by `vault serve`. Every error is an RFC 9457 problem "
                f"(`{http.PROBLEM_JSON}`). A key is required on every route but health and this "
                f"document when the host has one: the Function App's function keys, `vault serve "
                f"--api-key`; `vault serve` without --api-key requires none."
            ),
        },
        "paths": {
            api.STREAM_INFO.path: {
                "parameters": [stream],
                "post": _publish(),
                "get": {
                    "operationId": api.STREAM_INFO.name,
                    "summary": "The stream's position and a read-only URL for it",
                    "responses": {
                        "200": _json("The stream", "StreamInfo"),
                        "400": {"$ref": "#/components/responses/BadRequest"},
                        "401": {"$ref": "#/components/responses/Unauthorized"},
                        "404": _problem("No such stream"),
                        "500": {"$ref": "#/components/responses/Internal"},
                    },
                },
            },
            api.BATCH_STATUS.path: {
                "parameters": [stream, {"$ref": "#/components/parameters/token"}],
                "get": {
                    "operationId": api.BATCH_STATUS.name,
                    "summary": "Where a 202 points: the append's answer once committed",
                    "responses": {
                        "200": _json("The append is committed", "AppendResponse"),
                        "202": {"$ref": "#/components/responses/Pending"},
                        "400": {"$ref": "#/components/responses/BadRequest"},
                        "401": {"$ref": "#/components/responses/Unauthorized"},
                        "404": _problem(
                            "No append is known at this location (it finished and was forgotten): "
                            "send the batch again under the same Idempotency-Key, which appends it "
                            "at most once"
                        ),
                        "413": {"$ref": "#/components/responses/TooLarge"},
                        "422": {"$ref": "#/components/responses/KeyReused"},
                        "500": {"$ref": "#/components/responses/Internal"},
                        "503": {"$ref": "#/components/responses/Unavailable"},
                    },
                },
            },
            api.STREAM_LOG.path: {
                "parameters": [stream],
                "get": _log("get"),
                "head": _log("head"),
            },
            api.LIST_GROUPS.path: {
                "get": _listing(
                    api.LIST_GROUPS.name, "Every consumer group's lag on each stream it reads", "GroupList"
                )
            },
            api.CONSOLE.path: {
                "get": {
                    "operationId": api.CONSOLE.name,
                    "summary": "The browser console's static files (index.html for an empty path)",
                    "security": [],
                    "parameters": [
                        {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {
                        "200": {"description": "The file", "content": {"*/*": {"schema": {}}}},
                        "404": _problem("No such file of the console"),
                    },
                },
            },
            api.LIST_STREAMS.path: {
                "get": _listing(api.LIST_STREAMS.name, "Every stream with its position", "StreamList")
            },
            api.HEALTH.path: {
                "get": {
                    "operationId": api.HEALTH.name,
                    "summary": "Liveness",
                    "security": [],
                    "responses": {"200": _json("The host is up", "Health")},
                },
            },
            api.OPENAPI.path: {
                "get": {
                    "operationId": api.OPENAPI.name,
                    "summary": "This document",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "The OpenAPI document of the HTTP API",
                            "content": {http.JSON: {"schema": {"type": "object"}}},
                        }
                    },
                },
            },
        },
        "components": {
            "schemas": schemas["$defs"],
            "parameters": _parameters(),
            "headers": {
                "Location": {
                    "description": "Where the append's answer will be: GET it",
                    "schema": {"type": "string", "format": "uri-reference"},
                },
                "Retry-After": {
                    "description": "Seconds to wait before trying again",
                    "schema": {"type": "integer", "minimum": 0},
                },
            },
            "responses": _responses(),
            "securitySchemes": {
                "functionKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": http.FUNCTION_KEY_HEADER,
                    "description": "A function key (Function App) or the API key (`vault serve --api-key`)",
                },
                "functionKeyQuery": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "code",
                    "description": "The same key as a query parameter, where no header can be sent",
                },
            },
        },
        "security": [{"functionKey": []}, {"functionKeyQuery": []}],
    }


def _publish() -> dict[str, Any]:
    return {
        "operationId": api.PUBLISH.name,
        "summary": "Append a batch of messages to the stream, atomically",
        "description": (
            f"The body is JSON or the binary batch encoding (`{http.BINARY_BATCH}`), at most "
            f"{http.MAX_BODY_BYTES} bytes; a body declared larger is refused before it is read. In "
            "JSON each message is the shape `vault publish` reads and `vault read --json` prints: "
            "its value as text in `value`, or as bytes in base64 in `value_b64`, exactly one. The "
            "answer is 200 once the batch is committed, or 202 with a Location if it is not within "
            "the host's wait. A refused request appends nothing."
        ),
        "parameters": [{"$ref": "#/components/parameters/idempotencyKey"}],
        "requestBody": {
            "required": True,
            "content": {
                http.JSON: {"schema": {"$ref": _SCHEMAS + "PublishRequest"}},
                http.BINARY_BATCH: {"schema": {"description": _BINARY_LAYOUT}},
            },
        },
        "responses": {
            "200": _json("The batch is committed: where it ends and each message's offset", "AppendResponse"),
            "202": {"$ref": "#/components/responses/Pending"},
            "400": {"$ref": "#/components/responses/BadRequest"},
            "401": {"$ref": "#/components/responses/Unauthorized"},
            "413": {"$ref": "#/components/responses/TooLarge"},
            "415": _problem(f"The content type is neither {http.JSON} nor {http.BINARY_BATCH}"),
            "422": {"$ref": "#/components/responses/KeyReused"},
            "500": {"$ref": "#/components/responses/Internal"},
            "503": {"$ref": "#/components/responses/Unavailable"},
        },
    }


def _listing(operation_id: str, summary: str, model: str) -> dict[str, Any]:
    """A keyed GET that answers one model."""
    return {
        "operationId": operation_id,
        "summary": summary,
        "responses": {
            "200": _json(summary, model),
            "401": {"$ref": "#/components/responses/Unauthorized"},
            "500": {"$ref": "#/components/responses/Internal"},
        },
    }


def _log(method: str) -> dict[str, Any]:
    data = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    return {
        "operationId": api.STREAM_LOG.operation_id(method),
        "summary": "The log's bytes, read-only, by Range (where the store gives no read URL)",
        "parameters": [
            {
                "name": "Range",
                "in": "header",
                "required": False,
                "description": "One range, bytes=START-END or bytes=START- (any other is ignored: 200)",
                "schema": {"type": "string"},  # any other form is ignored, as RFC 9110 allows
            }
        ],
        "responses": {
            "200": {"description": "The whole log", "content": data},
            "206": {
                "description": "The bytes asked for",
                "headers": {"Content-Range": {"schema": {"type": "string"}}},
                "content": data,
            },
            "400": {"$ref": "#/components/responses/BadRequest"},
            "401": {"$ref": "#/components/responses/Unauthorized"},
            "404": _problem("No such stream"),
            "416": _problem("The range starts past the end of the log (or ends before it starts)"),
            "500": {"$ref": "#/components/responses/Internal"},
        },
    }


def _parameters() -> dict[str, Any]:
    key_schema = {"type": "string", "pattern": f"^{fmt.BATCH_ID.pattern}$"}
    return {
        "stream": {
            "name": "stream",
            "in": "path",
            "required": True,
            "description": (
                "Lowercase letters, digits and single hyphens, starting and ending with a letter or digit"
            ),
            "schema": {
                "type": "string",
                "minLength": 1,
                "maxLength": fmt.MAX_STREAM_NAME_CHARS,
                "pattern": f"^{fmt.STREAM_NAME.pattern}$",
            },
        },
        "token": {
            "name": "token",
            "in": "path",
            "required": True,
            "description": "The append's Idempotency-Key, or the token its 202 gave",
            "schema": key_schema,
        },
        "idempotencyKey": {
            "name": http.IDEMPOTENCY_KEY,
            "in": "header",
            "required": False,
            "description": (
                "Makes retries safe: the same key on the same stream answers the first result and "
                "appends nothing; the same key with a different batch is 422"
            ),
            "schema": key_schema,
        },
    }


def _responses() -> dict[str, Any]:
    return {
        "Pending": {
            "description": "Accepted, not yet committed: GET the Location for the answer",
            "headers": {"Location": {"$ref": "#/components/headers/Location"}},
            "content": {http.JSON: {"schema": {"$ref": _SCHEMAS + "PendingAppend"}}},
        },
        "BadRequest": _problem("The request is malformed: the detail says where"),
        "Unauthorized": _problem(
            f"A key is required: send it in {http.FUNCTION_KEY_HEADER} or as ?code= (the Function "
            "App's host answers this with an empty body)"
        ),
        "TooLarge": _problem(
            f"Over a limit: the body ({http.MAX_BODY_BYTES} bytes), the batch "
            f"({fmt.MAX_BATCH_MESSAGES} messages), a key ({fmt.MAX_KEY_BYTES} bytes in UTF-8) or a "
            f"value ({fmt.MAX_VALUE_BYTES} bytes)"
        ),
        "KeyReused": _problem("The Idempotency-Key was used on this stream for a different batch"),
        "Internal": _problem(
            "The request could not be completed; it is safe to retry with the same Idempotency-Key"
        ),
        "Unavailable": _problem(
            "Another writer holds the stream, or the host is holding all the requests it can: retry "
            "after Retry-After seconds with the same Idempotency-Key",
            retry_after=True,
        ),
    }


def _json(description: str, model: str) -> dict[str, Any]:
    return {"description": description, "content": {http.JSON: {"schema": {"$ref": _SCHEMAS + model}}}}


def _problem(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {http.PROBLEM_JSON: {"schema": {"$ref": _SCHEMAS + "Problem"}}},
    }
    if retry_after:
        response["headers"] = {"Retry-After": {"$ref": "#/components/headers/Retry-After"}}
    return response
