"""Checking a whole stream: every batch and record, the order of time, and the commit record."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from . import format as fmt
from .errors import CorruptDataError
from .framing import LogFrames


class VerifyReport(NamedTuple):
    stream: str
    position: int  # the committed position, verified up to
    batches: int
    messages: int


def verify_log(log: LogFrames, progress: Callable[[int], None] | None = None) -> VerifyReport:
    """Read the whole committed stream and check each batch's checksum, position and records
    (lengths, back-pointers, UTF-8 keys), that timestamps never go back, and that the commit's
    batch-id ring names batches that exist. Raises CorruptDataError at the first damage.
    `progress(position)` is called as the check advances."""
    stream = log.stream
    commit = log.commit_record()
    first = log.first_position()
    # Ids of batches trimmed away are simply forgotten: their entries name nothing to check.
    ring = {start: id_hash for id_hash, start in fmt.ring_entries(commit.ring) if start >= first}
    batches = messages = last_timestamp = 0
    for frames in log.chunks(0, commit.position):
        for buffer, at, header in frames:
            messages += len(fmt.decode_checked(stream, buffer, at, header))
            if header.timestamp_ms < last_timestamp:
                raise CorruptDataError(stream, header.position, "timestamp goes back in time")
            id_hash = ring.pop(header.position, None)
            if id_hash is not None and id_hash != fmt.batch_id_hash(header.batch_id):
                raise CorruptDataError(
                    stream, header.position, "the commit's batch-id ring names another batch id"
                )
            last_timestamp = header.timestamp_ms
            batches += 1
        if progress is not None:
            progress(frames[-1][2].end)
    if ring:
        raise CorruptDataError(
            stream, min(ring), "the commit's batch-id ring names a position where no batch starts"
        )
    if commit.position and commit.timestamp_ms != last_timestamp:
        raise CorruptDataError(stream, 0, "the commit's time is not the last batch's time")
    return VerifyReport(stream, commit.position, batches, messages)
