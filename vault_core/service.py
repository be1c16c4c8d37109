"""What both hosts (`vault serve` and the Function App) do the same way: one writer per stream,
the problem answered for an error, stream descriptions, and the bodies of an append's answers.
Nothing here knows an HTTP framework."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from . import consumer
from . import format as fmt
from . import http_models as http
from .errors import BatchIdConflict, FencedError, MessageTooLarge, StreamBusyError, VaultError
from .format import PreparedBatch
from .store import Store
from .writer import DEFAULT_SEGMENT_BYTES, AppendResult, Batch, StreamWriter, check_segment_bytes

log = logging.getLogger("vault.service")
B = TypeVar("B")  # a batch as a writer's append takes it
READ_URL_LIFETIME = timedelta(hours=1)  # VAULT_READ_URL_SECONDS when it is not set
MAX_READ_URL_LIFETIME = timedelta(days=7)  # what a user delegation SAS may last at most
CONSOLE = Path(__file__).resolve().parent / "console"  # the browser console's static files


class Writers:
    """One open writer per stream, opened on first use and kept. `takeover`: open each with
    takeover (the Function App's entity, which owns its stream wherever the runtime runs it)."""

    def __init__(
        self,
        store: Store,
        *,
        lease_seconds: int = 60,
        takeover: bool = False,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> None:
        self.store = store
        self.lease_seconds = lease_seconds
        self.takeover = takeover
        self.segment_bytes = segment_bytes
        self._writers: dict[str, StreamWriter] = {}
        self._lock = threading.Lock()

    def append(self, stream: str, batch: PreparedBatch) -> AppendResult:
        """Append an encoded batch (http_models.prepare_body) with the stream's writer."""
        (outcome,) = self._append_with(stream, [batch], lambda writer, one: [writer.append_prepared(one[0])])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def append_all(self, stream: str, batches: Sequence[Batch]) -> list[AppendResult | Exception]:
        """Append batches together with the stream's writer (StreamWriter.append_all), each with
        its own outcome."""
        return self._append_with(stream, batches, StreamWriter.append_all)

    def _append_with(
        self,
        stream: str,
        batches: Sequence[B],
        append: Callable[[StreamWriter, Sequence[B]], Sequence[AppendResult | Exception]],
    ) -> list[AppendResult | Exception]:
        """Each batch's outcome of `append` on the stream's writer (an error that stopped it
        altogether, opening the writer included, is the outcome of each). The policy for a writer
        fenced by another that took the stream over, for both hosts: ours is dead, so the batches
        it was fenced for go once more, through a writer opened afresh; their batch ids, if any,
        keep them exactly once."""
        outcomes: dict[int, AppendResult | Exception] = {}
        pending = list(range(len(batches)))
        for attempt in range(2):
            writer: StreamWriter | None = None
            try:
                writer = self.writer(stream)
                results = list(append(writer, [batches[i] for i in pending]))
            except Exception as error:
                results = [error] * len(pending)
            outcomes.update(zip(pending, results, strict=True))
            fenced = [i for i, got in zip(pending, results, strict=True) if isinstance(got, FencedError)]
            if not fenced or attempt:
                break
            self.drop(stream, writer)
            pending = fenced
        return [outcomes[i] for i in range(len(batches))]

    def writer(self, stream: str) -> StreamWriter:
        """The stream's writer, opened now if this process has none."""
        with self._lock:
            writer = self._writers.get(stream)
            if writer is None:
                writer = self._writers[stream] = self.store.writer(
                    stream,
                    lease_seconds=self.lease_seconds,
                    takeover=self.takeover,
                    segment_bytes=self.segment_bytes,
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


class InvalidSetting(VaultError, ValueError):
    """A host's setting (an environment variable, an app setting) has a value it cannot use."""


def read_url_lifetime(seconds: str | int | None) -> timedelta:
    """How long the read URLs a host hands out last: the VAULT_READ_URL_SECONDS setting as both
    hosts take it, a whole number of seconds (3600 when unset or empty), at most 7 days (a longer
    one is cut to 7 days: a user delegation SAS lasts no longer)."""
    if seconds is None or seconds == "":
        return READ_URL_LIFETIME
    text = str(seconds).strip()
    if isinstance(seconds, bool) or not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise InvalidSetting(
            f"VAULT_READ_URL_SECONDS must be a whole number of seconds above 0 (how long a read URL "
            f"lasts; 3600 when unset, at most {int(MAX_READ_URL_LIFETIME.total_seconds())}), got {seconds!r}"
        )
    return min(timedelta(seconds=int(text)), MAX_READ_URL_LIFETIME)


def segment_bytes_setting(value: str | int | None) -> int:
    """The size at which the streams' writers roll into a new segment: the VAULT_SEGMENT_BYTES
    setting as both hosts take it (1 TiB when unset or empty: most streams never roll)."""
    if value is None or value == "":
        return DEFAULT_SEGMENT_BYTES
    text = str(value).strip()
    if isinstance(value, bool) or not (text.isascii() and text.isdigit()):
        raise InvalidSetting(
            f"VAULT_SEGMENT_BYTES must be a whole number of bytes (when a stream's newest segment "
            f"holds this much, it rolls into a new one; {DEFAULT_SEGMENT_BYTES} when unset), got {value!r}"
        )
    try:
        return check_segment_bytes(int(text))
    except ValueError as error:
        raise InvalidSetting(f"VAULT_SEGMENT_BYTES: {error}") from None


def describe_stream(store: Store, stream: str, *, lifetime: timedelta = READ_URL_LIFETIME) -> http.StreamInfo:
    """GET /api/streams/{stream}: the position and a read-only URL lasting `lifetime`; 404 for an
    unknown stream."""
    if not store.has_stream(stream):
        raise http.unknown_stream(stream)
    with store.reader(stream) as reader:
        position = reader.position()
        bases = reader.segment_bases()
    return http.StreamInfo(
        stream=stream,
        position=position,
        read_url=store.read_url(stream, expires_in=lifetime),
        expires_on=datetime.now(UTC) + lifetime,
        first_position=bases[0],
        segments=len(bases),
    )


def summarize_streams(store: Store) -> http.StreamList:
    """GET /api/streams: every stream with its position and last append time."""
    summaries = []
    for name in store.streams():
        with store.reader(name) as reader:
            commit = reader.commit_record()
        last = fmt.from_ms(commit.timestamp_ms) if commit.position else None
        summaries.append(http.StreamSummary(stream=name, position=commit.position, last_append=last))
    return http.StreamList(streams=summaries)


def describe_groups(store: Store) -> http.GroupList:
    """GET /api/groups: every consumer group's lag on each stream it reads."""
    now = datetime.now(UTC)
    lags = consumer.group_lags(store)
    return http.GroupList(
        groups=[http.GroupLagInfo(**lag._asdict(), behind_seconds=lag.behind(now)) for lag in lags]
    )


def serve_log(
    store: Store, stream: str, range_header: str | None, head: bool = False
) -> tuple[int, bytes, dict[str, str]]:
    """GET (or HEAD) /api/streams/{stream}/log: the log's bytes, read-only, one `bytes=a-b` range
    at a time (what a browser reading the log needs where the store has no read URL of its own)."""
    source = store.open_source(stream)
    try:
        # The size is needed anyway, and a stream's log is never empty (stores.base.log_exists):
        # no listing of every stream on each of the many ranged reads a page makes.
        size = source.size()
        if size == 0:
            raise http.unknown_stream(stream)
        wanted = None if range_header is None else _byte_range(range_header, size)
        start, end = (0, size - 1) if wanted is None else wanted
        data = source.read(start, end - start + 1) if end >= start and not head else b""
    finally:
        source.close()
    headers = {"Accept-Ranges": "bytes", "Cache-Control": "no-store"}
    if head:
        return 200, b"", {**headers, "Content-Length": str(size)}
    if wanted is None:
        return 200, data, headers
    return 206, data, {**headers, "Content-Range": f"bytes {start}-{start + len(data) - 1}/{size}"}


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """The range asked for, or None for a header this route ignores (another unit, several
    ranges, a suffix range: RFC 9110 lets a server ignore those and answer the whole log)."""
    unit, _, spec = header.partition("=")
    first, dash, last = spec.strip().partition("-")
    if (
        unit.strip().lower() != "bytes"
        or not dash
        or not first.isdigit()
        or not (last.isdigit() or last == "")
    ):
        return None
    start = int(first)
    if start >= size or (last and int(last) < start):
        raise http.range_not_satisfiable(size)
    return start, min(int(last) if last else size - 1, size - 1)


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


# The errors a request may meet on purpose, each with the problem both hosts answer for it; any
# other error is a 500, logged.
PROBLEMS: tuple[tuple[type[Exception], Callable[[Exception], http.ProblemError]], ...] = (
    (BatchIdConflict, lambda error: http.key_reused(str(error))),
    (MessageTooLarge, lambda error: http.too_large(str(error))),
    (
        StreamBusyError,
        lambda error: http.unavailable("stream-busy", "The stream has another writer", f"{error}"),
    ),
)


def problem_for(error: BaseException) -> http.ProblemError:
    """The problem a host answers for an error raised while handling a request."""
    if isinstance(error, http.ProblemError):
        return error
    for kind, problem in PROBLEMS:
        if isinstance(error, kind):
            return problem(error)
    log.exception("request failed", exc_info=error)
    detail = "the vault could not complete the request; it is safe to retry with the same Idempotency-Key"
    if isinstance(error, VaultError):
        detail = f"{type(error).__name__}: {error}"
    return http.internal(detail)
