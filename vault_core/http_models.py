"""The HTTP contract, defined once: routes, bodies, limits and problem responses, used by the
Function App, by `vault serve` and by the producer client.

    POST /api/streams/{stream}   append a batch (JSON or the binary batch encoding below)
    GET  /api/streams/{stream}   position and a read-only URL
    GET  /api/streams            every stream with its position
    GET  /api/health             liveness, anonymous
    GET  /api/openapi.json       this contract as an OpenAPI document (vault_core/openapi.py), anonymous

Every error is an RFC 9457 problem (`application/problem+json`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, GetJsonSchemaHandler, ValidationError
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

from . import format as fmt
from . import lines, routes, transfer
from .errors import InvalidStreamName, MessageTooLarge

MAX_BODY_BYTES = 16 * 1024 * 1024
JSON = "application/json"
PROBLEM_JSON = "application/problem+json"
# The binary batch encoding, whose layout is transfer.py's.
BINARY_BATCH = "application/vnd.message-vault.batch"
IDEMPOTENCY_KEY = "Idempotency-Key"
FUNCTION_KEY_HEADER = "x-functions-key"  # where Azure Functions reads a function key; vault serve its API key
PROBLEM_BASE = "https://message-vault.dev/problems/"
MAX_VALUE_BASE64_CHARS = 4 * -(-fmt.MAX_VALUE_BYTES // 3)
# A message of a JSON body: the one shape of lines.message_from_json, which validates it (as it
# does each line `vault publish` reads), so that the two cannot differ; this is its JSON Schema.
MESSAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": (
        "A message: its key, and its value as text (value) or as bytes in base64 (value_b64), "
        "exactly one of the two. The offset and timestamp of a message read back (`vault read "
        "--json`) are accepted and ignored, so what a read prints can be published as it is."
    ),
    "properties": {
        # JSON Schema counts characters; the limits are bytes in UTF-8, which a key or a text
        # value within its character limit can still be over (413).
        "key": {
            "type": "string",
            "maxLength": fmt.MAX_KEY_BYTES,
            "default": "",
            "description": f"at most {fmt.MAX_KEY_BYTES} bytes in UTF-8; empty if left out",
        },
        "value": {
            "type": "string",
            "maxLength": fmt.MAX_VALUE_BYTES,
            "description": (
                f"the value as text, stored as its UTF-8 bytes (at most {fmt.MAX_VALUE_BYTES}); "
                "a value that is not text goes in value_b64"
            ),
        },
        "value_b64": {
            "type": "string",
            "contentEncoding": "base64",
            "pattern": f"^{lines.BASE64.pattern}$",
            "maxLength": MAX_VALUE_BASE64_CHARS,
            "description": (
                "the value's bytes in standard base64, padded with =, at most "
                f"{fmt.MAX_VALUE_BYTES} bytes decoded: for a value that is not UTF-8 text"
            ),
        },
        "offset": {"description": "ignored: where a read found the message"},
        "timestamp": {"description": "ignored: when the message read was appended"},
    },
    "additionalProperties": False,
    "oneOf": [{"required": ["value"]}, {"required": ["value_b64"]}],
}


def _message_in(fields: object) -> fmt.Message:
    try:
        return lines.message_from_json(fields)
    except lines.BadMessage as error:
        raise PydanticCustomError("message", str(error)) from None


class _MessageShape:
    """What makes pydantic validate a message with lines.message_from_json and describe it as
    MESSAGE_SCHEMA (a component of its own, MessageIn, in the OpenAPI document)."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(
            _message_in, ref="MessageIn", json_schema_input_schema=core_schema.any_schema()
        )

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        reference = handler(schema)
        handler.resolve_ref_schema(reference).update(copy.deepcopy(MESSAGE_SCHEMA))
        return reference


MessageIn = Annotated[fmt.Message, _MessageShape()]


class PublishRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # parse_batch enforces the count for both encodings (with its own answers: 400 for none, 413
    # for too many); the schema states it.
    messages: Annotated[
        list[MessageIn], Field(json_schema_extra={"minItems": 1, "maxItems": fmt.MAX_BATCH_MESSAGES})
    ]


class AppendResponse(BaseModel):
    stream: str
    position: int
    offsets: list[int]


class PendingAppend(BaseModel):
    """A 202's body: the append is accepted; `status` (also the Location) answers its outcome."""

    stream: str
    status: str


class StreamInfo(BaseModel):
    stream: str
    position: int
    read_url: str
    expires_on: datetime
    first_position: int = 0  # where the stream starts: above 0 once old segments were trimmed
    segments: int = 1  # how many segments hold it (docs/format.md, "Segments")


class StreamSummary(BaseModel):
    stream: str
    position: int
    last_append: datetime | None = None  # when its last batch was committed; None if never


class StreamList(BaseModel):
    streams: list[StreamSummary]


class GroupLagInfo(BaseModel):
    """How far a consumer group is behind on one stream."""

    group: str
    stream: str
    checkpoint: int  # the next position the group reads
    position: int  # the stream's committed length
    lag_bytes: int
    oldest_unread: datetime | None  # when the first unread message was appended
    behind_seconds: float  # from the oldest unread message to now; 0 when caught up
    trimmed_bytes: int = 0  # bytes past the checkpoint trimmed away before the group read them


class GroupList(BaseModel):
    groups: list[GroupLagInfo]


class Health(BaseModel):
    status: Literal["ok"]


class Problem(BaseModel):
    """RFC 9457 problem details."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str


class ProblemError(Exception):
    """A request refused with an HTTP status; rendered as problem+json by every host."""

    def __init__(self, status: int, slug: str, title: str, detail: str, **headers: str) -> None:
        super().__init__(detail)
        self.status = status
        self.problem = Problem(type=PROBLEM_BASE + slug, title=title, status=status, detail=detail)
        self.headers = headers

    def body(self) -> bytes:
        return self.problem.model_dump_json().encode()


def bad_request(detail: str) -> ProblemError:
    return ProblemError(400, "bad-request", "The request is malformed", detail)


def too_large(detail: str) -> ProblemError:
    return ProblemError(413, "too-large", "The request is over a limit", detail)


def not_found(detail: str) -> ProblemError:
    """No such route or file."""
    return ProblemError(404, "not-found", "Not found", detail)


def unknown_stream(stream: str) -> ProblemError:
    return ProblemError(404, "not-found", "Unknown stream", f"stream {stream!r} does not exist")


def unavailable(slug: str, title: str, detail: str, *, retry_after: int = 2) -> ProblemError:
    """A 503 that may pass: the client tries again after `retry_after` seconds (Retry-After)."""
    return ProblemError(503, slug, title, detail, **{"Retry-After": str(retry_after)})


def unauthorized() -> ProblemError:
    return ProblemError(
        401, "unauthorized", "A key is required", f"send the API key in the {FUNCTION_KEY_HEADER} header"
    )


def not_allowed(method: str, allowed: Sequence[str]) -> ProblemError:
    """A 405 names the methods the resource takes (RFC 9110)."""
    detail = f"{method} is not allowed here"
    return ProblemError(405, "method-not-allowed", "Method not allowed", detail, Allow=", ".join(allowed))


def range_not_satisfiable(size: int) -> ProblemError:
    return ProblemError(
        416,
        "range-not-satisfiable",
        "Range not satisfiable",
        f"the log has {size} bytes",
        **{"Content-Range": f"bytes */{size}"},
    )


def unsupported_media_type(media_type: str) -> ProblemError:
    detail = f"content type {media_type or '(none)'!r} is not accepted: use {JSON} or {BINARY_BATCH}"
    return ProblemError(415, "unsupported-media-type", "Unsupported content type", detail)


def key_reused(detail: str) -> ProblemError:
    """The Idempotency-Key names a batch appended with other messages."""
    return ProblemError(422, "idempotency-key-reused", "Idempotency-Key reused", detail)


def internal(detail: str) -> ProblemError:
    return ProblemError(500, "internal", "Internal error", detail)


def check_stream(stream: str) -> str:
    try:
        return fmt.check_stream_name(stream)
    except InvalidStreamName as error:
        raise bad_request(str(error)) from None


def check_idempotency_key(value: str | None) -> str | None:
    """The Idempotency-Key, which is the batch's id, checked as every batch id is; 400 if not one."""
    if value is None:
        return None
    try:
        fmt.check_batch_id(value)
    except ValueError:
        raise bad_request(
            f"{IDEMPOTENCY_KEY} {value[:140]!r} is invalid: use 1-128 letters, digits and ._:-"
        ) from None
    return value


def check_content_length(value: str | None) -> int | None:
    """The declared body size (None if none is declared); refuses one too large before reading
    any of it."""
    if value is None or not value.isdigit():
        return None
    if int(value) > MAX_BODY_BYTES:
        raise body_too_large()
    return int(value)


def unknown_batch() -> ProblemError:
    """What a status location answers once the append it stood for is forgotten: the client
    sends the batch again under the same Idempotency-Key, which appends it at most once."""
    return ProblemError(404, "unknown-batch", "Unknown batch", "no append is known at this location")


def body_too_large() -> ProblemError:
    return too_large(f"the request body is over {MAX_BODY_BYTES} bytes; send smaller batches")


def parse_batch(content_type: str | None, body: bytes) -> list[fmt.Message]:
    """The messages of a publish request body, or a ProblemError saying what is wrong."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    if len(body) > MAX_BODY_BYTES:
        raise body_too_large()
    if media_type == JSON:
        messages = _parse_json(body)
    elif media_type == BINARY_BATCH:
        try:
            messages = transfer.parse_binary(body)
        except transfer.TooManyMessages as error:
            raise too_large(str(error)) from None
        except transfer.MalformedBatch as error:
            raise bad_request(str(error)) from None
    else:
        raise unsupported_media_type(media_type)
    if not messages:
        raise bad_request("the batch is empty: send 1 to 10000 messages")
    if len(messages) > fmt.MAX_BATCH_MESSAGES:
        raise too_large(f"the batch has {len(messages)} messages, over the limit of {fmt.MAX_BATCH_MESSAGES}")
    longest_safe_key = fmt.MAX_KEY_BYTES // 4  # no key this short can be over the limit in UTF-8
    for index, (key, value) in enumerate(messages):
        if len(key) > longest_safe_key and len(key.encode()) > fmt.MAX_KEY_BYTES:
            raise too_large(f"message {index}: key is over {fmt.MAX_KEY_BYTES} bytes in UTF-8")
        if len(value) > fmt.MAX_VALUE_BYTES:
            raise too_large(f"message {index}: value is {len(value)} bytes, over {fmt.MAX_VALUE_BYTES}")
    return messages


def _parse_json(body: bytes) -> list[fmt.Message]:
    """The messages of a JSON body; each is validated by lines.message_from_json (through
    MessageIn), the limits on keys and values are then parse_batch's."""
    try:
        request = PublishRequest.model_validate_json(body)
    except ValidationError as error:
        first = error.errors()[0]
        if first["type"] == "json_invalid":
            raise bad_request(f"the body is not valid JSON: {first['msg']}") from None
        if first["type"] == "message":  # lines.message_from_json's own words
            raise bad_request(f"message {first['loc'][-1]}: {first['msg']}") from None
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise bad_request(f"{where}: {first['msg']}") from None
    return request.messages


def prepare_body(content_type: str | None, body: bytes, batch_id: str | None) -> fmt.PreparedBatch:
    """A publish body as the batch a writer appends, or a ProblemError saying what is wrong. The
    binary encoding goes straight to records in one validating pass (compiled, no Python object
    per message); the rest is parsed into messages, then encoded."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    batch_id_bytes = fmt.check_batch_id(batch_id)
    if media_type == BINARY_BATCH and len(body) <= MAX_BODY_BYTES:
        prepared = transfer.prepare_binary(body, batch_id_bytes)
        if prepared is not None:
            return prepared
    messages = parse_batch(content_type, body)
    try:
        return fmt.prepare_batch(messages, batch_id_bytes)
    except MessageTooLarge as error:
        raise too_large(str(error)) from None


def encode_json(messages: list[fmt.Message]) -> bytes:
    """A batch as the JSON body: each value as text when it is UTF-8, else as value_b64."""
    body = {"messages": [lines.message_json(key, value) for key, value in messages]}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def batch_location(stream: str, token: str) -> str:
    """Where a 202 points: GET it for the append's outcome."""
    return routes.BATCH_STATUS.url(stream=stream, token=token)
