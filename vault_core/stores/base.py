"""The seam between the vault and a place that keeps bytes.

A backend supplies a `Store` (the namespace of streams) whose logs are plain byte sequences:
`LogSource` to read one, `LogWriter` to own and write one. The format, the commit protocol and the
batch ids live in the writer and reader above this seam; a backend only moves bytes, keeps them
durable, and fences a writer that lost ownership.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Protocol, TypeAlias

from ..errors import check_int
from ..format import check_stream_name

if TYPE_CHECKING:
    from ..checkpoints import Checkpoints
    from ..reader import StreamReader
    from ..writer import StreamWriter


Buffer: TypeAlias = bytes | bytearray | memoryview  # what a log writes: any bytes, without a copy


class LogSource(Protocol):
    """One stream's log, read-only. Reading needs no lease and never blocks the writer."""

    def read(self, start: int, length: int) -> bytes:
        """Bytes [start, start + length) of the log; fewer (possibly none) past its end, and
        none if the stream does not exist."""
        ...

    def size(self) -> int:
        """Bytes the log takes on storage (0 if the stream does not exist)."""
        ...

    def close(self) -> None: ...


class LogWriter(LogSource, Protocol):
    """One stream's log, owned by this process alone (a blob lease, a file lock) while open; it
    reads as a `LogSource` does."""

    created: bool  # whether opening it created the log: the stream is new

    def write(self, start: int, parts: Sequence[Buffer]) -> None:
        """Store the parts end to end at `start` (page-aligned, whole 512-byte pages in all);
        durable when it returns. Raises FencedError if ownership was lost."""
        ...

    def write_commit_slot(self, start: int, record: bytes) -> None:
        """Store a commit slot, after the data it covers is durable: atomic, durable and fenced
        (FencedError if ownership was lost or the log changed since this writer's last write)."""
        ...

    def refresh(self) -> None:
        """Re-learn the log's state after a write whose outcome is unknown."""
        ...

    def discard(self) -> None:
        """Remove the log and give up ownership: for a new stream nothing was committed to."""
        ...

    def close(self) -> None:
        """Give up ownership."""
        ...


class Store(abc.ABC):
    """A namespace of streams: a local directory, or a blob container. `str(store)` says where it
    is without any secret (no account key, no SAS), for messages and logs."""

    @abc.abstractmethod
    def exists(self) -> bool:
        """Whether the store itself (the directory, the container) exists."""

    @abc.abstractmethod
    def streams(self) -> list[str]:
        """Names of the streams that exist, sorted (none if the store does not exist)."""

    @abc.abstractmethod
    def open_log(self, stream: str, *, lease_seconds: int, takeover: bool = False) -> LogWriter:
        """Create the stream's log if needed and take ownership of it; StreamBusyError if another
        live writer owns it. With `takeover`, end any other writer's ownership at once instead
        (where the backend can: see each backend), so that its next write raises FencedError."""

    @abc.abstractmethod
    def open_source(self, stream: str) -> LogSource:
        """The stream's log for reading (it need not exist yet)."""

    @abc.abstractmethod
    def read_url(self, stream: str, *, expires_in: timedelta = timedelta(hours=1)) -> str:
        """A URL granting read access to this one stream and nothing else."""

    @abc.abstractmethod
    def put_object(self, name: str, data: bytes) -> None:
        """Store a small named object beside the streams (a staged batch, say), replacing any."""

    @abc.abstractmethod
    def get_object(self, name: str) -> bytes:
        """A named object's bytes; FileNotFoundError if there is none."""

    @abc.abstractmethod
    def delete_object(self, name: str) -> None:
        """Delete a named object; nothing happens if there is none."""

    @abc.abstractmethod
    def consumer_groups(self) -> list[str]:
        """Names of the consumer groups with checkpoints on this store's streams, sorted."""

    @abc.abstractmethod
    def checkpoints(self, group: str) -> Checkpoints:
        """Consumer group `group`'s checkpoints on this store's streams: files beside the streams
        on the local store; the account's Table service (table `vaultcheckpoints`) on Azure."""

    def writer(self, stream: str, *, lease_seconds: int = 60, takeover: bool = False) -> StreamWriter:
        """The stream's single writer; creates the stream. StreamBusyError if it has another.

        `takeover=True` is for a caller that already knows it is the stream's rightful owner (the
        Function App's durable entity, which the runtime runs in one place at a time): it ends
        the other writer's ownership at once instead of waiting for it to lapse. The old writer,
        alive, frozen or mid-write, is fenced: its next write raises FencedError and none of its
        bytes become visible. On the local store, whose lock the OS frees the moment its holder
        dies, there is nothing to wait out and `takeover` changes nothing."""
        from ..writer import StreamWriter

        check_stream_name(stream)
        if not 15 <= check_int("lease_seconds", lease_seconds) <= 60:
            raise ValueError(f"lease_seconds must be 15 to 60, got {lease_seconds}")
        if not isinstance(takeover, bool):
            raise TypeError("takeover must be a bool")
        return StreamWriter(stream, self.open_log(stream, lease_seconds=lease_seconds, takeover=takeover))

    def has_stream(self, stream: str) -> bool:
        """Whether the stream exists: its log does, and a log is never empty (a new stream whose
        first append was refused is removed). One request, however many streams there are."""
        from ..framing import LogFrames

        source = self.open_source(check_stream_name(stream))
        try:
            return LogFrames(stream, source).exists()
        finally:
            source.close()

    def delete_stream(self, stream: str) -> None:
        """Remove the stream for good: every consumer group's checkpoint on it, then its log.
        StoreNotFound if there is no such stream; StreamBusyError while a writer holds it (stop
        that writer first). A stream made again under the name starts empty, and is read from
        its start by every group."""
        from ..errors import StoreNotFound

        if not self.has_stream(stream):
            raise StoreNotFound(f"stream {stream!r} does not exist in {self}")
        log = self.open_log(stream, lease_seconds=15)  # no writer can append meanwhile
        try:
            for group in self.consumer_groups():
                with self.checkpoints(group) as checkpoints:
                    checkpoints.forget(stream)
        except BaseException:
            log.close()
            raise
        log.discard()

    def reader(self, stream: str) -> StreamReader:
        from ..reader import StreamReader

        check_stream_name(stream)
        return StreamReader(stream, self.open_source(stream))

    def close(self) -> None:  # noqa: B027 - backends with nothing to release keep this
        """Release connections."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
