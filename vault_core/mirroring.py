"""A local copy of a stream (from Azure, say) that consumers replay at disk speed.

The copy is the stream's own log in an embedded store, so `open_store(path).reader(stream)` reads
it like any other. Copying is incremental (only what is past the copy's committed position) and
resumable: every batch is checked before it is written, and the copy commits what it holds after
each chunk, so an interrupted mirror loses at most one chunk of work. When a run finishes, the
copy's bytes equal the source's, commit slots included.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from . import format as fmt
from .errors import VaultError
from .framing import LogFrames
from .reader import StreamReader
from .stores.base import Buffer, LogWriter

# Bytes compared at each end of the copy to tell that it is a copy of this stream.
IDENTITY_PROBE = 4096


class MirrorResult(NamedTuple):
    stream: str
    path: Path  # the copy's folder: its segment files
    start: int  # the copy's committed position before this run
    position: int  # the copy's committed position now: the source's when the run began


def mirror(
    reader: StreamReader, to: str | os.PathLike[str], *, progress: Callable[[int], None] | None = None
) -> MirrorResult:
    """Bring the copy of `reader`'s stream in the embedded store at `to` up to the stream's
    committed position. `progress(position)` is called after each chunk. StreamBusyError if
    another mirror (or a writer) holds the copy."""
    slots = LogFrames(reader.stream, reader.log).commit_slots()
    if not slots:
        raise VaultError(f"stream {reader.stream!r} does not exist: there is nothing to mirror")
    from .segments import SegmentedLog
    from .stores.local import LocalStore  # not at import time: it needs fcntl

    target = fmt.decode_commit_record(reader.stream, slots)
    starts_at = reader.first_position()
    copies = LocalStore(to)
    if starts_at and not copies.segments(reader.stream):
        # The source was trimmed: the copy starts where it does, in a first segment at that base.
        copies.open_log(reader.stream, lease_seconds=60, base=starts_at).close()
    log = SegmentedLog(copies, reader.stream, lease_seconds=60)
    try:
        copy = LogFrames(reader.stream, log).commit_record()
        _check_same_stream(
            reader, log, max(starts_at, log.first_position()), copy.position, target.position, to
        )
        committed = copy
        for frames in reader.chunks(copy.position, target.position):
            first, last = frames[0][2], frames[-1][2]
            parts: list[Buffer] = [memoryview(buffer)[at : at + batch.length] for buffer, at, batch in frames]
            parts.append(bytes(-fmt.data_at(last.end) % fmt.PAGE))  # whole pages, as a writer leaves them
            log.write(fmt.data_at(first.position), parts)
            # Commit what the copy holds so far; the last step replaces both slots with the source's.
            committed = fmt.CommitRecord(committed.counter + 1, last.end, last.timestamp_ms, b"")
            log.write_commit_slot(
                fmt.COMMIT_SLOTS[committed.counter % 2], fmt.encode_commit_record(committed)
            )
            if progress is not None:
                progress(last.end)
        log.write_commit_slot(0, slots)
    finally:
        log.close()
    return MirrorResult(reader.stream, Path(to) / reader.stream, copy.position, target.position)


def _check_same_stream(
    reader: StreamReader, log: LogWriter, first: int, position: int, end: int, to: object
) -> None:
    """Refuse to extend a copy of something else: its first and last bytes (from `first`, where
    both start) must be the source's."""
    if position > end:
        raise VaultError(
            f"the copy of {reader.stream!r} in {to} is ahead of the source ({position} > {end}): it is "
            "not a copy of this stream; remove it or mirror somewhere else"
        )
    size = min(position - first, IDENTITY_PROBE)
    for start in {first, position - size} if size > 0 else ():
        at = fmt.data_at(start)
        if log.read(at, size) != reader.log.read(at, size):
            raise VaultError(
                f"the copy of {reader.stream!r} in {to} differs from the source at position {start}: "
                "it is not a copy of this stream; remove it or mirror somewhere else"
            )
