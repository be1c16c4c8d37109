"""Messages as lines of text: JSON lines in and out, and a plain form for people.

A message line is `{"key": ..., "value": ...}` with the value as text, or `"value_b64"` with it in
base64 when it is not UTF-8 text. Read back, a message also carries its offset and timestamp.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from . import format as fmt
from .errors import MessageTooLarge

_FIELDS = frozenset({"key", "value", "value_b64"})


class BadLine(ValueError):
    """An input line that is not a message; says which line and why."""

    def __init__(self, number: int, reason: str) -> None:
        super().__init__(f"line {number}: {reason}")
        self.number = number


def parse_line(line: bytes | str, number: int) -> fmt.Message | None:
    """The message on one input line (None for a blank line); BadLine if it is not one."""
    if not line.strip():
        return None
    try:
        fields = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BadLine(number, f"not JSON ({error})") from None
    if not isinstance(fields, dict):
        raise BadLine(number, 'expected an object like {"key": "...", "value": "..."}')
    unknown = fields.keys() - _FIELDS
    if unknown:
        raise BadLine(number, f"unknown field(s) {sorted(unknown)}; a message has key, value or value_b64")
    key = fields.get("key", "")
    if not isinstance(key, str):
        raise BadLine(number, f"key must be a string, got {type(key).__name__}")
    if ("value" in fields) == ("value_b64" in fields):
        raise BadLine(number, "give exactly one of value (text) and value_b64 (base64)")
    if _lone_surrogate(key):
        raise BadLine(number, "the key holds a lone UTF-16 surrogate (like \\ud800), which is not text")
    if "value" in fields:
        if not isinstance(fields["value"], str):
            raise BadLine(number, f"value must be a string, got {type(fields['value']).__name__}")
        if _lone_surrogate(fields["value"]):
            raise BadLine(
                number, "the value holds a lone UTF-16 surrogate (like \\ud800): send bytes as value_b64"
            )
        value = fields["value"].encode()
    else:
        try:
            value = base64.b64decode(fields["value_b64"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise BadLine(number, "value_b64 is not valid base64") from None
    message = fmt.Message(key, value)
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
    fields: dict[str, Any] = {
        "offset": message.offset,
        "timestamp": iso_time(message.timestamp),
        "key": message.key,
    }
    try:
        fields["value"] = message.value.decode()
    except UnicodeDecodeError:
        fields["value_b64"] = base64.b64encode(message.value).decode()
    return json.dumps(fields, ensure_ascii=False)


def to_text(message: fmt.StoredMessage) -> str:
    """Offset, time, key and value, tab-separated; a value that is not UTF-8 as base64:..."""
    when = iso_time(message.timestamp)
    try:
        value = message.value.decode()
    except UnicodeDecodeError:
        value = "base64:" + base64.b64encode(message.value).decode()
    return f"{message.offset}\t{when}\t{message.key}\t{value}"
