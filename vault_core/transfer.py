"""The binary transfer format: how a batch travels in a publish request body (media type
http_models.BINARY_BATCH), apart from how it is stored (format.py) and from the JSON models.

A body is its messages back to back, each a u8 key length, a u32 value length (little-endian),
the key's UTF-8 bytes and the value's bytes. The compiled record path reads such a body straight
into stored records; it is chosen here once, at import, as format.py chooses its own.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from . import format as fmt

BINARY_RECORD = struct.Struct("<BI")


class MalformedBatch(ValueError):
    """A binary body that is not a batch: what is wrong, in words for the client."""


class TooManyMessages(MalformedBatch):
    """A binary body with more messages than a batch holds."""


def parse_binary(body: bytes) -> list[fmt.Message]:
    """The messages of a binary body; MalformedBatch if it is not one. The limits on keys and
    values are the caller's."""
    messages: list[Any] = []  # plain (key, value) tuples, which read as Messages: a Message costs more
    index, end = 0, len(body)
    unpack = BINARY_RECORD.unpack_from
    while index < end:
        if end - index < BINARY_RECORD.size:
            raise MalformedBatch(f"binary batch: message {len(messages)} is cut short at byte {index}")
        key_len, value_len = unpack(body, index)
        key_at = index + BINARY_RECORD.size
        value_at = key_at + key_len
        index = value_at + value_len
        if index > end:
            raise MalformedBatch(f"binary batch: message {len(messages)} runs past the end of the body")
        try:
            key = body[key_at:value_at].decode()
        except UnicodeDecodeError:
            raise MalformedBatch(f"binary batch: the key of message {len(messages)} is not UTF-8") from None
        messages.append((key, body[value_at:index]))
        if len(messages) > fmt.MAX_BATCH_MESSAGES:
            raise TooManyMessages(f"the batch has more than {fmt.MAX_BATCH_MESSAGES} messages")
    return messages


def _encode_in_python(messages: Sequence[tuple[str, bytes]]) -> bytes:
    pack = BINARY_RECORD.pack
    parts: list[bytes] = []
    for key, value in messages:
        key_bytes = key.encode()
        parts += (pack(len(key_bytes), len(value)), key_bytes, value)
    return b"".join(parts)


def _no_shortcut(body: bytes, batch_id: bytes) -> fmt.PreparedBatch | None:
    """Where the compiled path is not built, a body is parsed into messages, then encoded."""
    return None


# tests/test_records.py swaps these in to compare them with the compiled twins.
PYTHON_TWINS = {"encode_binary": _encode_in_python, "prepare_binary": _no_shortcut}
if fmt.COMPILED is None:
    encode_binary = _encode_in_python
    prepare_binary = _no_shortcut
else:
    _built = fmt.COMPILED

    def encode_binary(messages: Sequence[tuple[str, bytes]]) -> bytes:
        """A batch in the binary transfer format (what the client sends)."""
        fast: bytes | None = _built.encode_binary(messages)
        return _encode_in_python(messages) if fast is None else fast

    def prepare_binary(body: bytes, batch_id: bytes) -> fmt.PreparedBatch | None:
        """A binary body straight to the records a writer appends, in one validating pass with no
        Python object per message; None for anything unusual (a wrong body among them), which
        the caller then parses and encodes the long way, for the same result or error."""
        fast = _built.prepare_binary(body, batch_id)
        return None if fast is None else fmt.PreparedBatch(*fast)
