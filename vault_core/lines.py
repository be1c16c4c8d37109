"""A message as JSON, one shape everywhere: JSON lines in and out (`vault publish`, `vault read
--json`), the HTTP API's JSON bodies (http_models, which validates each message with
`message_from_json`), and a plain form for people.

A message is `{"key": ..., "value": ...}` with the value as text, or `"value_b64"` with its bytes
in base64 when it is not UTF-8 text; the key is optional (""). Read back, a message also carries
its offset and timestamp, which input accepts and ignores, so what a read prints can be published
as it is.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from . import format as fmt
from .errors import MessageTooLarge

# Standard base64 with its padding, nothing else: checked with this pattern (which the OpenAPI
# document states) rather than left to Python's decoder, so that what is accepted is exactly it.
BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
MESSAGE_FIELDS = frozenset({"key", "value", "value_b64"})
IGNORED_FIELDS = frozenset({"offset", "timestamp"})  # what a read adds
_ACCEPTED = MESSAGE_FIELDS | IGNORED_FIELDS
_ONE_VALUE = "give exactly one of value (text) and value_b64 (base64)"
SHAPE = 'an object like {"key": "...", "value": "..."} (text; bytes as "value_b64": "<base64>")'


class BadMessage(ValueError):
    """A JSON value that is not a message; says why (and what to send)."""


class BadLine(ValueError):
    """An input line that is not a message; says which line and why."""

    def __init__(self, number: int, reason: str) -> None:
        super().__init__(f"line {number}: {reason}")
        self.number = number


def message_from_json(fields: object) -> fmt.Message:
    """The message a decoded JSON value holds, or BadMessage saying what is wrong. The limits on
    keys and values are left to the caller, which answers them in its own way."""
    if not isinstance(fields, dict):
        raise BadMessage(f"expected {SHAPE}")
    if not fields.keys() <= _ACCEPTED:
        unknown = sorted(fields.keys() - _ACCEPTED)
        raise BadMessage(
            f"unknown field(s) {unknown}; a message has key, value or value_b64 (offset and "
            "timestamp, which reads add, are ignored)"
        )
    key = fields.get("key", "")
    if not isinstance(key, str):
        raise BadMessage(f"key must be a string, got {type(key).__name__}")
    if _lone_surrogate(key):
        raise BadMessage("the key holds a lone UTF-16 surrogate (like \\ud800), which is not text")
    text, encoded = fields.get("value"), fields.get("value_b64")
    if "value" in fields:
        if "value_b64" in fields:
            raise BadMessage(f"{_ONE_VALUE}, not both")
        if not isinstance(text, str):
            raise BadMessage(
                f"value must be text (a string), got {type(text).__name__}: send bytes as value_b64"
            )
        try:
            return fmt.Message(key, text.encode())
        except UnicodeEncodeError:
            raise BadMessage(
                "the value holds a lone UTF-16 surrogate (like \\ud800): send bytes as value_b64"
            ) from None
    if "value_b64" not in fields:
        raise BadMessage(f"{_ONE_VALUE}; this message has neither")
    if not isinstance(encoded, str):
        raise BadMessage(f"value_b64 must be a base64 string, got {type(encoded).__name__}")
    if not BASE64.fullmatch(encoded):
        raise BadMessage("value_b64 is not valid base64 (the standard alphabet, padded with =)")
    return fmt.Message(key, base64.b64decode(encoded))


def message_json(key: str, value: bytes) -> dict[str, str]:
    """A message as its JSON fields: the value as text when it is UTF-8, else in base64."""
    try:
        return {"key": key, "value": value.decode()}
    except UnicodeDecodeError:
        return {"key": key, "value_b64": base64.b64encode(value).decode()}


def parse_line(line: bytes | str, number: int) -> fmt.Message | None:
    """The message on one input line (None for a blank line); BadLine if it is not one."""
    if not line.strip():
        return None
    try:
        fields = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BadLine(number, f"not JSON ({error})") from None
    try:
        message = message_from_json(fields)
    except BadMessage as error:
        raise BadLine(number, str(error)) from None
    try:
        fmt.prepare_batch([message])  # the limits the vault will hold it to
    except (MessageTooLarge, ValueError) as error:
        raise BadLine(number, str(error).removeprefix("message 0: ")) from None
    return message


def _lone_surrogate(text: str) -> bool:
    """JSON's \\ud800 escapes decode to Python strings that cannot be UTF-8."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


def parse_lines(lines: Iterable[bytes | str]) -> Iterator[fmt.Message]:
    """The messages of JSON lines, numbered from 1; BadLine at the first line that is wrong."""
    for number, line in enumerate(lines, 1):
        message = parse_line(line, number)
        if message is not None:
            yield message


def iso_time(when: datetime) -> str:
    """A UTC time as ISO 8601 with milliseconds and Z."""
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_json(message: fmt.StoredMessage) -> str:
    """A message read, as the JSON line `vault publish` takes back (its offset and timestamp
    first, which publishing ignores)."""
    fields: dict[str, Any] = {"offset": message.offset, "timestamp": iso_time(message.timestamp)}
    fields.update(message_json(message.key, message.value))
    return json.dumps(fields, ensure_ascii=False)


def to_text(message: fmt.StoredMessage) -> str:
    """Offset, time, key and value, tab-separated; a value that is not UTF-8 as base64:..."""
    when = iso_time(message.timestamp)
    try:
        value = message.value.decode()
    except UnicodeDecodeError:
        value = "base64:" + base64.b64encode(message.value).decode()
    return f"{message.offset}\t{when}\t{message.key}\t{value}"
