"""How the Azure stores retry storage and how long they wait for it.

Resets, timeouts, `500 Operation timed out` and `503 Server Busy` are everyday events on Azure,
and an append waits for each of its requests (every producer of a stream waits on one group
commit): a retry must come at once, then back off if storage keeps refusing. The blob SDK's own
ExponentialRetry waits `initial_backoff + increment_base ** n` with n starting at 1, so its first
retry comes after a second or more: at 5% of requests faulted, a stream spent most of its time
waiting. Here the SDK's retry machinery stays (which errors and statuses it retries, rewinding
bodies, counting connect and read errors apart); only the waits are ours: 0.02, 0.1, 0.5, 2.5 and
12.5 s (each jittered by half, so that writers do not retry in step), some 16 s in all. Throttling
is different: on `503 Server Busy` (or 429) with Retry-After, storage says how long to back off,
and the wait is at least that.

Table storage's SDK takes azure-core's retry settings: its first retry goes at once and later ones
back off exponentially from `retry_backoff_factor`, honouring Retry-After; as many retries as here.

A retried write may already have been applied (an answer lost on the way back): every write the
stores retry is idempotent (the same pages, the same bytes) or conditional, and a conditional
commit or checkpoint refused after such a retry is resolved by reading it back (`BlobLog._landed`,
the save id of a checkpoint), never by guessing.
"""

from __future__ import annotations

import random
from typing import Any

from azure.storage.blob import ExponentialRetry

WAITS = (0.02, 0.1, 0.5, 2.5, 12.5)  # seconds before each retry
RETRIES = len(WAITS)
THROTTLED = (429, 503)  # the answers whose Retry-After is honoured
MAX_RETRY_AFTER = 30.0
CONNECT_TIMEOUT = 5  # seconds to open a connection: on Azure it takes milliseconds
# Seconds without a byte of the answer: the SDK's own 60. A busy emulator (or storage account)
# can take over 20 s to start a large read's answer, and cutting it off only sends it again.
READ_TIMEOUT = 60


class QuickRetry(ExponentialRetry):
    """Storage's exponential retry with the waits above."""

    def __init__(self) -> None:
        super().__init__(retry_total=RETRIES, random_jitter_range=0)

    def get_backoff_time(self, settings: dict[str, Any]) -> float:
        wait = WAITS[min(settings["count"], RETRIES) - 1]  # count is 1 at the first retry
        return max(random.uniform(wait / 2, wait * 1.5), _retry_after(settings))


def _retry_after(settings: dict[str, Any]) -> float:
    """The seconds a throttling answer asked for in Retry-After (0 if it was not one)."""
    history = settings.get("history") or []
    response = history[-1].http_response if history else None
    if response is None or response.status_code not in THROTTLED:
        return 0.0
    try:
        return min(float(response.headers.get("retry-after", "")), MAX_RETRY_AFTER)
    except ValueError:
        return 0.0


def blob_client_options() -> dict[str, Any]:
    return {"retry_policy": QuickRetry(), "connection_timeout": CONNECT_TIMEOUT, "read_timeout": READ_TIMEOUT}


def table_client_options() -> dict[str, Any]:
    return {"retry_total": RETRIES, "connection_timeout": CONNECT_TIMEOUT, "read_timeout": READ_TIMEOUT}
