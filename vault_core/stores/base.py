"""The seam between the vault and a place that keeps bytes.

A backend supplies a `Backend` (the namespace of streams) whose logs are plain byte sequences:
`LogSource` to read one, `LogWriter` to own and write one. The format, the commit protocol and the
batch ids live in the writer and reader above this seam, and what users hold is a
`vault_core.Store` over a backend; a backend only moves bytes, keeps them durable, and fences a
writer that lost ownership.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, NamedTuple, Protocol, TypeAlias

if TYPE_CHECKING:
    from ..checkpoints import Checkpoints


Buffer: TypeAlias = bytes | bytearray | memoryview  # what a log writes: any bytes, without a copy


class Segment(NamedTuple):
    """One log of a stream's chain (`vault_core.segments`): its data starts at stream position
    `base`. A sealed segment is stored as its final copy (a block blob on Azure, which storage can
    move to a cooler tier); the others are logs a writer may still own."""

    base: int
    sealed: bool = False


FIRST_SEGMENT = "log"  # the name of the segment at base 0: every stream's log before segments


def segment_name(base: int, prefix: str = FIRST_SEGMENT) -> str:
    """A segment's name in its stream's folder: `log` at base 0, `log.<base, 20 digits>` after
    (names sort as their bases do); another `prefix` for another form of it."""
    return prefix if base == 0 else f"{prefix}.{base:020d}"


def segment_base(name: str, prefix: str = FIRST_SEGMENT) -> int | None:
    """The base of the segment named `name` (`prefix` or `prefix.<20 digits>`), or None if that is
    not a segment's name."""
    if name == prefix:
        return 0
    head, dot, digits = name.rpartition(".")
    if head != prefix or not dot or len(digits) != 20 or not digits.isdigit() or int(digits) == 0:
        return None
    return int(digits)


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


class StreamLog(LogSource, Protocol):
    """A whole stream's log, however many segments hold it: a `LogSource` that also says where
    the stream starts now and where each segment begins."""

    def first_position(self, *, fresh: bool = True) -> int:
        """Where the stream starts: 0, or the base of its oldest segment trimming left. With
        `fresh=False`, as last listed: trimming only ever moves it up, so a position below it is
        trimmed for sure, and a read of a segment trimmed since finds that out itself."""
        ...

    def segment_bases(self) -> list[int]:
        """Where each segment starts, oldest first, listed anew (none: no stream)."""
        ...


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


class Backend(abc.ABC):
    """A namespace of streams: a local directory, a blob container, or memory. `str(backend)` says
    where it is without any secret (no account key, no SAS), for messages and logs."""

    @abc.abstractmethod
    def exists(self) -> bool:
        """Whether the store itself (the directory, the container) exists."""

    @abc.abstractmethod
    def streams(self) -> list[str]:
        """Names of the streams that exist, sorted (none if the store does not exist)."""

    @abc.abstractmethod
    def segments(self, stream: str) -> list[Segment]:
        """The stream's segments, by base (none if the stream does not exist). Where a segment
        is stored both as a log and, being sealed, as its final copy, the log is listed."""

    @abc.abstractmethod
    def open_log(
        self, stream: str, *, lease_seconds: int, takeover: bool = False, base: int = 0, create: bool = True
    ) -> LogWriter:
        """Take ownership of the stream's segment log at `base`, creating it if `create` (else
        FileNotFoundError if there is none); StreamBusyError if another live writer owns it.
        With `takeover`, end any other writer's ownership at once instead (where the backend can:
        see each backend), so that its next write raises FencedError."""

    @abc.abstractmethod
    def open_segment(self, stream: str, segment: Segment) -> LogSource:
        """One segment of the stream for reading (it need not exist: then it reads as empty)."""

    def seal(self, stream: str, log: LogWriter, base: int, length: int) -> None:  # noqa: B027
        """Store the owned segment log at `base`, whose first `length` bytes are final, as its
        sealed copy, and remove the log. Backends whose logs are as good as final keep them."""

    @abc.abstractmethod
    def delete_segment(self, stream: str, segment: Segment) -> None:
        """Remove a sealed segment for good (nothing happens if it is gone already)."""

    def can_roll(self, stream: str) -> bool:
        """Whether the stream may go on in a new segment: whether its read URL would reach it."""
        return True

    def stream_removed(self, stream: str) -> None:  # noqa: B027 - most backends keep nothing more
        """After the last segment of a stream was removed: forget what else marks it as one."""

    @abc.abstractmethod
    def read_url(self, stream: str, *, expires_in: timedelta = timedelta(hours=1)) -> str:
        """A URL granting read access to this one stream and nothing else."""

    @abc.abstractmethod
    def write_file(self, name: str, data: bytes) -> None:
        """Store a small named file beside the streams (a staged batch, a publish's progress
        record), replacing any. Its name is a path of stream-like names, never a stream's."""

    @abc.abstractmethod
    def read_file(self, name: str) -> bytes:
        """A named file's bytes; FileNotFoundError if there is none."""

    @abc.abstractmethod
    def delete_file(self, name: str) -> None:
        """Delete a named file; nothing happens if there is none."""

    @abc.abstractmethod
    def consumer_groups(self) -> list[str]:
        """Names of the consumer groups with checkpoints on this store's streams, sorted."""

    @abc.abstractmethod
    def checkpoints(self, group: str) -> Checkpoints:
        """Consumer group `group`'s checkpoints on this store's streams: files beside the streams
        on the local store; the account's Table service (table `vaultcheckpoints`) on Azure."""

    def close(self) -> None:  # noqa: B027 - backends with nothing to release keep this
        """Release connections."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
