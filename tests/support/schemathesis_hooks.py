"""Schemathesis hooks for fuzzing the HTTP API (tests/test_openapi.py): how to make a body in the
binary batch encoding, which the OpenAPI document describes in words only. The batches are valid
(1 to a few messages, keys within their UTF-8 limit), as a positive example must be; what a
malformed binary body gets is pinned down in tests/test_http.py."""

from __future__ import annotations

import schemathesis
from hypothesis import strategies as st

from vault_core import format as fmt
from vault_core import http_models as http
from vault_core import transfer

_keys = st.text(max_size=fmt.MAX_KEY_BYTES // 4)  # within the limit in UTF-8, whatever the characters
_messages = st.lists(st.tuples(_keys, st.binary(max_size=64)), min_size=1, max_size=5)

schemathesis.openapi.media_type(http.BINARY_BATCH, _messages.map(transfer.encode_binary))
