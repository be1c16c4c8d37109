"""The compiled record path (vault_core/_records.c) against the pure-Python reference it mirrors:
on the same inputs, good and bad, both give the same results and raise the same errors."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vault_core import format as fmt
from vault_core import http_models as http
from vault_core import transfer
from vault_core.format import Message


def test_the_compiled_path_is_built_and_on_unless_turned_off():
    """`pip install` builds it on a machine with a compiler; only VAULT_PURE_PYTHON turns it off."""
    assert fmt.COMPILED is not None
    assert os.environ.get("VAULT_PURE_PYTHON") is None
    # chosen once, at import: the record path every call takes is the compiled one
    assert fmt.prepare_batch is not fmt.PYTHON_TWINS["prepare_batch"]
    assert fmt.decode_records is not fmt.PYTHON_TWINS["decode_records"]
    assert transfer.encode_binary is not transfer.PYTHON_TWINS["encode_binary"]


def outcome(call: Callable[[], Any]) -> tuple:
    try:
        value = call()
    except Exception as error:
        return ("raised", type(error), str(error))
    if isinstance(value, fmt.PreparedBatch):
        return ("prepared", bytes(value.buffer), value.message_count, value.offsets)
    if isinstance(value, list):
        return ("list", [(type(m), tuple(m), type(m[-1])) for m in value])
    return ("value", type(value), value)


def compiled_and_pure(call: Callable[[], Any]) -> tuple[tuple, tuple]:
    """What `call` gives on the compiled record path, and on the Python one swapped in for it."""
    compiled = outcome(call)
    twins = [(module, name, twin) for module in (fmt, transfer) for name, twin in module.PYTHON_TWINS.items()]
    chosen = [(module, name, getattr(module, name)) for module, name, _ in twins]
    for module, name, twin in twins:
        setattr(module, name, twin)
    try:
        pure = outcome(call)
    finally:
        for module, name, function in chosen:
            setattr(module, name, function)
    return compiled, pure


keys = st.one_of(
    st.sampled_from(["order-created", "order-paid", "", "é", "日本"]),
    st.text(max_size=90),  # some over 255 bytes in UTF-8; some with lone surrogates
)
values = st.one_of(st.binary(max_size=300), st.binary(max_size=20).map(bytearray))
messages = st.lists(st.tuples(keys, values).map(lambda kv: Message(*kv)), max_size=40)
batch_ids = st.sampled_from([b"", b"order-42", b"x" * 128])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages, batch_ids)
def test_encoding_a_batch(batch, batch_id):
    compiled, pure = compiled_and_pure(lambda: fmt.prepare_batch(batch, batch_id))
    assert compiled == pure


@pytest.mark.parametrize(
    "batch",
    [
        [Message("k", bytes(fmt.MAX_VALUE_BYTES + 1))],
        [Message("k" * 256, b"")],
        [Message("k", b"v")] * (fmt.MAX_BATCH_MESSAGES + 1),
        [Message("k", bytes(fmt.MAX_VALUE_BYTES))] * 65,
        "kv",
        (m for m in [Message("k", b"v")]),
        [("k", b"v", 3)],
        [Message("k", "text")],
        [Message("k", memoryview(b"view"))],
        (Message("k", b"tuple of messages"),),
    ],
)
def test_encoding_what_the_reference_refuses_or_converts(batch):
    compiled, pure = compiled_and_pure(lambda: fmt.prepare_batch(batch, b"id"))
    assert compiled == pure


def binary_bodies() -> st.SearchStrategy[bytes]:
    """Well-formed binary batch bodies, and some cut, padded or with keys that are not UTF-8."""
    raw_keys = st.one_of(
        st.text(max_size=40).map(lambda k: k.encode("utf-8", "surrogatepass")), st.binary(max_size=8)
    )
    record = st.tuples(raw_keys, st.binary(max_size=200)).map(
        lambda kv: transfer.BINARY_RECORD.pack(min(len(kv[0]), 255), len(kv[1])) + kv[0][:255] + kv[1]
    )
    body = st.lists(record, max_size=30).map(b"".join)
    return st.one_of(
        body, body.map(lambda b: b[:-1]), body.map(lambda b: b + b"\x01"), st.binary(max_size=64)
    )


@settings(max_examples=400, deadline=None)
@given(binary_bodies(), st.sampled_from([None, "key-1"]))
def test_a_binary_body_straight_to_records(body, key):
    compiled, pure = compiled_and_pure(lambda: http.prepare_body(http.BINARY_BATCH, body, key))
    assert compiled == pure


def test_a_binary_body_with_every_kind_of_wrong():
    big_value = (
        transfer.BINARY_RECORD.pack(1, fmt.MAX_VALUE_BYTES + 1) + b"k" + bytes(fmt.MAX_VALUE_BYTES + 1)
    )
    too_many = (transfer.BINARY_RECORD.pack(1, 0) + b"k") * (fmt.MAX_BATCH_MESSAGES + 1)
    for body in [b"", b"\x01", big_value, too_many, transfer.BINARY_RECORD.pack(2, 0) + b"\xc3\x28"]:
        compiled, pure = compiled_and_pure(lambda body=body: http.prepare_body(http.BINARY_BATCH, body, "k"))
        assert compiled == pure and compiled[0] == "raised"


@settings(max_examples=300, deadline=None)
@given(messages.filter(bool), st.integers(0, 10**12), st.integers(0, 2**40))
def test_decoding_a_batch(batch, position, timestamp):
    try:
        prepared = fmt.prepare_batch(batch, b"id")
    except (ValueError, TypeError):
        return
    fmt.seal_batch(prepared, position=position, timestamp_ms=timestamp)
    buffer = b"pad" + bytes(prepared.buffer)
    header = fmt.decode_batch_header("s", buffer, 3, position)
    compiled, pure = compiled_and_pure(lambda: fmt.decode_records("s", buffer, 3, header))
    assert compiled == pure
    assert [(m.key, m.value) for m in fmt.decode_records("s", buffer, 3, header)] == [tuple(m) for m in batch]


@settings(max_examples=300, deadline=None)
@given(messages.filter(bool), st.data())
def test_decoding_damaged_records_fails_alike(batch, data):
    try:
        prepared = fmt.prepare_batch(batch, b"")
    except (ValueError, TypeError):
        return
    buffer = bytearray(prepared.buffer)
    at = data.draw(st.integers(fmt.BATCH_HEADER.size, len(buffer) - 1))
    buffer[at] ^= data.draw(st.integers(1, 255))
    damaged = bytes(buffer)
    header = fmt.BatchHeader(0, len(damaged), 7, prepared.message_count, b"")
    compiled, pure = compiled_and_pure(lambda: fmt.decode_records("s", damaged, 0, header))
    assert compiled == pure


@settings(max_examples=300, deadline=None)
@given(messages)
def test_the_clients_binary_encoding(batch):
    compiled, pure = compiled_and_pure(lambda: transfer.encode_binary(batch))
    assert compiled == pure


def test_decoding_keeps_a_batch_header_count_check():
    prepared = fmt.prepare_batch([Message("k", b"v")] * 3, b"")
    header = fmt.BatchHeader(0, len(prepared.buffer), 7, 2, b"")  # says two, holds three
    compiled, pure = compiled_and_pure(lambda: fmt.decode_records("s", bytes(prepared.buffer), 0, header))
    assert compiled == pure and compiled[0] == "raised"
