"""What `open_store` returns: a backend's streams, as writers, readers and consumer groups.

The backend (`vault_core.stores`) only keeps bytes; this object builds the vault's parts over it,
so that neither knows the other's inside: the writer and reader take a log, whatever holds it.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from . import retention
from .checkpoints import Checkpoints
from .errors import StoreNotFound, check_int
from .format import check_stream_name
from .framing import LogFrames
from .reader import StreamReader
from .retention import Retention
from .segments import SegmentedLog, SegmentedSource
from .segments import trim as trim_segments
from .stores import DEFAULT_CONTAINER, open_backend
from .stores.base import Backend
from .writer import DEFAULT_SEGMENT_BYTES, StreamWriter, check_segment_bytes


def open_store(
    target: str | os.PathLike[str], *, credential: Any = None, container: str = DEFAULT_CONTAINER
) -> Store:
    """A local directory path -> the embedded store; an Azure Storage connection string
    ("UseDevelopmentStorage=true" for the emulator) or an account URL ("https://<account>.blob.
    core.windows.net[/<container>]", with `credential`, by default DefaultAzureCredential) ->
    page blobs in `container`; "memory:" (a new store) or "memory:NAME" (this process's store of
    that name) -> streams in memory."""
    return Store(open_backend(target, credential=credential, container=container))


class Store:
    """A namespace of streams: a local directory, a blob container, or memory. `str(store)` says
    where it is without any secret (no account key, no SAS), for messages and logs."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def __repr__(self) -> str:
        return f"Store({self.backend!r})"

    def __str__(self) -> str:
        return str(self.backend)

    # --- streams ------------------------------------------------------------------------------

    def writer(
        self,
        stream: str,
        *,
        lease_seconds: int = 60,
        takeover: bool = False,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> StreamWriter:
        """The stream's single writer; creates the stream. StreamBusyError if it has another.

        Once the stream's newest segment holds `segment_bytes` of data (default 1 TiB: most
        streams never get there), the writer seals it and goes on in a new one (docs/format.md,
        "Segments"); sealed segments can be tiered and trimmed.

        `takeover=True` is for a caller that already knows it is the stream's rightful owner (the
        Function App's durable entity, which the runtime runs in one place at a time): it ends
        the other writer's ownership at once instead of waiting for it to lapse. The old writer,
        alive, frozen or mid-write, is fenced: its next write raises FencedError and none of its
        bytes become visible. On the local store, whose lock the OS frees the moment its holder
        dies, there is nothing to wait out and `takeover` changes nothing."""
        check_stream_name(stream)
        if not 15 <= check_int("lease_seconds", lease_seconds) <= 60:
            raise ValueError(f"lease_seconds must be 15 to 60, got {lease_seconds}")
        if not isinstance(takeover, bool):
            raise TypeError("takeover must be a bool")
        check_segment_bytes(segment_bytes)
        log = self.open_log(stream, lease_seconds=lease_seconds, takeover=takeover)
        return StreamWriter(stream, log, segment_bytes=segment_bytes)

    def reader(self, stream: str) -> StreamReader:
        check_stream_name(stream)
        return StreamReader(stream, self.open_source(stream))

    def streams(self) -> list[str]:
        """Names of the streams that exist, sorted (none if the store does not exist)."""
        return self.backend.streams()

    def has_stream(self, stream: str) -> bool:
        """Whether the stream exists: its log does, and a log is never empty (a new stream whose
        first append was refused is removed). One request, however many streams there are."""
        source = self.open_source(check_stream_name(stream))
        try:
            return LogFrames(stream, source).exists()
        finally:
            source.close()

    def delete_stream(self, stream: str) -> None:
        """Remove the stream for good: every consumer group's checkpoint on it, then its segments.
        StoreNotFound if there is no such stream; StreamBusyError while a writer holds it (stop
        that writer first). A stream made again under the name starts empty, and is read from
        its start by every group."""
        self._require(stream)
        log = self.open_log(stream, lease_seconds=15)  # no writer can append meanwhile
        try:
            for group in self.consumer_groups():
                with self.checkpoints(group) as checkpoints:
                    checkpoints.forget(stream)
            retention.save(self.backend, stream, Retention())  # a stream made again keeps everything
        except BaseException:
            log.close()
            raise
        log.discard()

    def trim(self, stream: str, before: int, *, dry_run: bool = False) -> int:
        """Remove the stream's sealed segments that lie wholly below `before` (as
        `StreamWriter.trim`, without taking the stream from its writer); its first position after
        (with `dry_run`, what it would be, nothing removed). StoreNotFound if there is no such
        stream."""
        self._require(stream)
        return trim_segments(self.backend, stream, before, dry_run=dry_run)

    def retention(self, stream: str) -> Retention:
        """The stream's retention policy (`Retention()`, keep everything, unless one was set)."""
        return retention.load(self.backend, check_stream_name(stream))

    def set_retention(self, stream: str, policy: Retention) -> None:
        """Set the stream's retention policy. Its writer applies it each time it rolls into a new
        segment; `apply_retention` applies it now. StoreNotFound if there is no such stream."""
        if not isinstance(policy, Retention):
            raise TypeError(f"policy must be a Retention, got {type(policy).__name__}")
        self._require(stream)
        retention.save(self.backend, stream, policy)

    def apply_retention(self, stream: str, *, dry_run: bool = False) -> int:
        """Trim what the stream's retention policy lets go, now, without taking the stream from
        its writer; its first position after (with `dry_run`, what it would be)."""
        policy = self.retention(stream)
        self._require(stream)
        with self.reader(stream) as reader:
            before = policy.trim_point(stream, reader.log)
        return trim_segments(self.backend, stream, before, dry_run=dry_run)

    def _require(self, stream: str) -> None:
        if not self.has_stream(stream):
            raise StoreNotFound(f"stream {stream!r} does not exist in {self}")

    def read_url(self, stream: str, *, expires_in: timedelta = timedelta(hours=1)) -> str:
        """A URL granting read access to this one stream and nothing else."""
        return self.backend.read_url(stream, expires_in=expires_in)

    # --- consumer groups ----------------------------------------------------------------------

    def consumer_groups(self) -> list[str]:
        """Names of the consumer groups with checkpoints on this store's streams, sorted."""
        return self.backend.consumer_groups()

    def checkpoints(self, group: str) -> Checkpoints:
        """Consumer group `group`'s checkpoints on this store's streams: files beside the streams
        on the local store; the account's Table service (table `vaultcheckpoints`) on Azure."""
        return self.backend.checkpoints(group)

    # --- the backend's own parts, for tools below the writer and reader -----------------------

    def exists(self) -> bool:
        """Whether the store itself (the directory, the container) exists."""
        return self.backend.exists()

    def open_log(self, stream: str, *, lease_seconds: int, takeover: bool = False) -> SegmentedLog:
        """The stream's segments, owned as one log (see `Backend.open_log`): for tools that write
        bytes as they are, as mirror does; appending is the writer's."""
        return SegmentedLog(self.backend, stream, lease_seconds=lease_seconds, takeover=takeover)

    def open_source(self, stream: str) -> SegmentedSource:
        """The stream's segments read as one log, its bytes as they are (it need not exist yet)."""
        return SegmentedSource(self.backend, stream)

    def write_file(self, name: str, data: bytes) -> None:
        """A small named file beside the streams (a staged batch, a publish's progress record)."""
        self.backend.write_file(name, data)

    def read_file(self, name: str) -> bytes:
        """A named file's bytes; FileNotFoundError if there is none."""
        return self.backend.read_file(name)

    def delete_file(self, name: str) -> None:
        """Delete a named file; nothing happens if there is none."""
        self.backend.delete_file(name)

    def close(self) -> None:
        """Release connections."""
        self.backend.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
