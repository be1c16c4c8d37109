"""Batches posted to a host of the HTTP API (`vault serve`, the Function App), for tests."""

from __future__ import annotations

from typing import Protocol

import httpx

from vault_core import Message
from vault_core import http_models as http


class Host(Protocol):
    url: str  # the host's root: the routes are under /api


def post(
    host: Host, stream: str, body: bytes, content_type: str = http.JSON, **headers: str
) -> httpx.Response:
    return httpx.post(
        f"{host.url}/api/streams/{stream}", content=body, headers={"content-type": content_type, **headers}
    )


def json_body(*messages: tuple[str, bytes]) -> bytes:
    return http.encode_json([Message(k, v) for k, v in messages])
