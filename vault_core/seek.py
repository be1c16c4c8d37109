"""Finding where a stream reaches a point in time: a binary search over the log's batch headers,
a few small reads however long the stream is (batch timestamps never decrease)."""

from __future__ import annotations

from datetime import datetime

from . import format as fmt
from . import framing
from .framing import LogFrames

# A time search probes while its range is wider than this, then walks the batch headers in it.
SEEK_SPAN = 1024 * 1024
# Bytes a time search reads at first when looking for the next batch start after a probe.
SEEK_PROBE = 64 * 1024


def seek_time(log: LogFrames, when: datetime) -> int:
    """The offset of the first message appended at or after `when` (an aware datetime; naive
    means UTC), or the end of the stream if there is none."""
    target = fmt.to_ms(when)
    commit = log.commit_record()
    end = commit.position
    if end == 0 or commit.timestamp_ms < target:
        return end
    # The segment first: each starts with a batch, whose time is the segment's first. Invariant:
    # the batch at bases[low] is older than the target, and none before bases[high] is newer.
    bases = [base for base in log.segment_bases() if base < end]
    if log.read_header(bases[0], end).timestamp_ms >= target:
        return _first_offset(log, bases[0], end)
    low, high = 0, len(bases)
    while high - low > 1:
        middle = (low + high) // 2
        if log.read_header(bases[middle], end).timestamp_ms < target:
            low = middle
        else:
            high = middle
    start = bases[low]
    limit = bases[high] if high < len(bases) else end
    # Then within it. Invariants: `low` starts a batch older than the target; `high` starts one
    # at or after it (or is the end); no batch starts in [top, high), so probes stay below `top`.
    low, high, top = start, limit, limit
    while top - low > SEEK_SPAN:
        middle = (low + top) // 2
        found = _next_batch(log, middle, top, end)
        if found is None:
            top = middle
        elif found.timestamp_ms < target:
            low = found.position
        else:
            high = top = found.position
    for header in log.headers(low, high, end, SEEK_SPAN):
        if header.timestamp_ms >= target:
            return _first_offset(log, header.position, end)
    return _first_offset(log, high, end)


def _first_offset(log: LogFrames, position: int, end: int) -> int:
    """The offset of the first message of the batch at `position`, which must be wholly in the
    log: a time search answers only where a read can start."""
    return position + log.whole_header(position, end).records_at


def _next_batch(log: LogFrames, position: int, limit: int, end: int) -> fmt.BatchHeader | None:
    """The first batch that starts in [position, limit), found by its magic bytes."""
    window = SEEK_PROBE
    while position < limit:
        length = min(window, limit - position + fmt.BATCH_HEADER.size)
        data = log.log.read(fmt.data_at(position), length)
        at = data.find(fmt.BATCH_MAGIC)
        while at != -1 and position + at < limit:
            header = log.batch_in(data, at, position + at, end)
            if header is not None:
                return header
            at = data.find(fmt.BATCH_MAGIC, at + 1)
        if len(data) < length:
            return None
        position += len(data) - len(fmt.BATCH_MAGIC) + 1  # a magic cut in two is found next time
        window = min(2 * window, framing.REPLAY_CHUNK)
    return None
