"""What both hosts (`vault serve` and the Function App) do the same way: one writer per stream,
the problem answered for an error, stream descriptions, and the bodies of an append's answers.
Nothing here knows an HTTP framework."""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime, timedelta

from . import http_models as http
from .errors import BatchIdConflict, FencedError, MessageTooLarge, StreamBusyError, VaultError
from .format import PreparedBatch
from .stores.base import Store
from .writer import AppendResult, StreamWriter

log = logging.getLogger("vault.service")
READ_URL_LIFETIME = timedelta(hours=1)


class Writers:
    """One open writer per stream, opened on first use and kept. `takeover`: open each with
    takeover (the Function App's entity, which owns its stream wherever the runtime runs it)."""

    def __init__(self, store: Store, *, lease_seconds: int = 60, takeover: bool = False) -> None:
        self.store = store
        self.lease_seconds = lease_seconds
        self.takeover = takeover
        self._writers: dict[str, StreamWriter] = {}
        self._lock = threading.Lock()

    def append(self, stream: str, batch: PreparedBatch) -> AppendResult:
        """Append an encoded batch (http_models.prepare_body) with the stream's writer."""
        for attempt in range(2):
            writer = self.writer(stream)
            try:
                return writer.append_prepared(batch)
            except FencedError:
                # Another writer took the stream over; ours is dead. One fresh try: the batch id
                # (if any) keeps it exactly once.
                self.drop(stream, writer)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def writer(self, stream: str) -> StreamWriter:
        """The stream's writer, opened now if this process has none."""
        with self._lock:
            writer = self._writers.get(stream)
            if writer is None:
                writer = self._writers[stream] = self.store.writer(
                    stream, lease_seconds=self.lease_seconds, takeover=self.takeover
                )
            return writer

    def drop(self, stream: str, writer: StreamWriter | None = None) -> None:
        """Close the stream's writer (only if it is still `writer`, when given)."""
        with self._lock:
            current = self._writers.get(stream)
            if current is None or (writer is not None and current is not writer):
                return
            del self._writers[stream]
        current.close()

    def close(self) -> None:
        with self._lock:
            writers, self._writers = list(self._writers.values()), {}
        for writer in writers:
            writer.close()


def describe_stream(store: Store, stream: str) -> http.StreamInfo:
    """GET /api/streams/{stream}: the position and a read-only URL; 404 for an unknown stream."""
    if stream not in store.streams():
        raise http.ProblemError(404, "not-found", "Unknown stream", f"stream {stream!r} does not exist")
    with store.reader(stream) as reader:
        position = reader.position()
    return http.StreamInfo(
        stream=stream,
        position=position,
        read_url=store.read_url(stream, expires_in=READ_URL_LIFETIME),
        expires_on=datetime.now(UTC) + READ_URL_LIFETIME,
    )


def summarize_streams(store: Store) -> http.StreamList:
    """GET /api/streams: every stream with its position."""
    summaries = []
    for name in store.streams():
        with store.reader(name) as reader:
            summaries.append(http.StreamSummary(stream=name, position=reader.position()))
    return http.StreamList(streams=summaries)


def appended_body(stream: str, position: int, offsets: list[int]) -> bytes:
    """The body of a committed append's answer (AppendResponse, written straight to JSON: for a
    batch of thousands of offsets the model would cost as much as the append)."""
    return json.dumps(
        {"stream": stream, "position": position, "offsets": offsets}, separators=(",", ":")
    ).encode()


def pending_answer(stream: str, token: str) -> tuple[bytes, str]:
    """The body and Location of a 202: the append is accepted, its result is at the location."""
    location = http.batch_location(stream, token)
    return http.PendingAppend(stream=stream, status=location).model_dump_json().encode(), location


def problem_for(error: BaseException) -> http.ProblemError:
    """The problem a host answers for an error raised while handling a request."""
    if isinstance(error, http.ProblemError):
        return error
    if isinstance(error, BatchIdConflict):
        return http.ProblemError(422, "idempotency-key-reused", "Idempotency-Key reused", str(error))
    if isinstance(error, MessageTooLarge):
        return http.too_large(str(error))
    if isinstance(error, StreamBusyError):
        return http.ProblemError(
            503, "stream-busy", "The stream has another writer", str(error), **{"Retry-After": "2"}
        )
    log.exception("request failed", exc_info=error)
    detail = "the vault could not complete the request; it is safe to retry with the same Idempotency-Key"
    if isinstance(error, VaultError):
        detail = f"{type(error).__name__}: {error}"
    return http.ProblemError(500, "internal", "Internal error", detail)
