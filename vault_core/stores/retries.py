"""How the Azure stores retry storage and how long they wait for it.

Resets, timeouts, `500 Operation timed out` and `503 Server Busy` are everyday events on Azure,
and an append waits for each of its requests: a retry must come quickly, then back off if storage
keeps refusing. The blob SDK's own ExponentialRetry waits `initial_backoff + increment_base ** n`
with n starting at 1, so even with a 0 s initial backoff its first retry comes after 1 to 2 s or
more: a single reset stalled every append of a stream for seconds. Here the SDK's retry machinery
stays (which errors and statuses it retries, rewinding bodies, counting connect and read errors
apart); only the waits are ours: 0.2 s, 0.8 s, 3.2 s, 12.8 s (each jittered by half, so writers
do not retry in step), or what storage asks for in Retry-After when it asks for longer.

Table storage's SDK takes azure-core's retry settings: its first retry goes at once and later ones
back off exponentially from `retry_backoff_factor`, honouring Retry-After; four retries, as here.

A retried write may already have been applied (an answer lost on the way back): every write the
stores retry is idempotent (the same pages, the same bytes) or conditional, and a conditional
commit refused after such a retry is resolved by reading the commit back (`BlobLog._landed`).
"""

from __future__ import annotations

import random
from typing import Any

from azure.storage.blob import ExponentialRetry

RETRIES = 4  # 0.2 + 0.8 + 3.2 + 12.8 s: a request gives up after some 17 s of refusals
FIRST_WAIT = 0.2
GROWTH = 4
MAX_RETRY_AFTER = 30.0
CONNECT_TIMEOUT = 5  # seconds to open a connection: on Azure it takes milliseconds
# Seconds without a byte of the answer. Azure answers a Put Page of 4 MiB or a read of a chunk
# within milliseconds once the request is sent; a request that hangs this long is retried.
READ_TIMEOUT = 20


class QuickRetry(ExponentialRetry):
    """Storage's exponential retry with the waits above."""

    def __init__(self) -> None:
        super().__init__(initial_backoff=0, increment_base=GROWTH, retry_total=RETRIES, random_jitter_range=0)

    def get_backoff_time(self, settings: dict[str, Any]) -> float:
        wait = FIRST_WAIT * GROWTH ** (settings["count"] - 1)  # count is 1 at the first retry
        return max(random.uniform(wait / 2, wait * 1.5), _retry_after(settings))


def _retry_after(settings: dict[str, Any]) -> float:
    """The seconds storage asked for in its last answer's Retry-After (0 if none)."""
    history = settings.get("history") or []
    response = history[-1].http_response if history else None
    value = response.headers.get("retry-after", "") if response is not None else ""
    try:
        return min(float(value), MAX_RETRY_AFTER)
    except ValueError:
        return 0.0


def blob_client_options() -> dict[str, Any]:
    return {"retry_policy": QuickRetry(), "connection_timeout": CONNECT_TIMEOUT, "read_timeout": READ_TIMEOUT}


def table_client_options() -> dict[str, Any]:
    return {"retry_total": RETRIES, "connection_timeout": CONNECT_TIMEOUT, "read_timeout": READ_TIMEOUT}
