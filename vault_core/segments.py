"""A stream's log as a chain of segments, read and written as the one log it always was.

A stream's data is a chain of segments (docs/format.md, "Segments"). Each is a log as the format
lays it out, two commit slots and then data, holding the stream's data from its `base` position
on: the first segment has base 0, and each next one starts where the one before ended. So a
position means the same whatever segment holds it, and `SegmentedSource` and `SegmentedLog` show
the writer, the reader and every tool above them one log in the format's addresses, with the
newest segment's commit slots as the log's.

Position p of the segment with base b is stored at its byte DATA_START + p - origin(b), where the
origin is b rounded down to a page: writes stay page-aligned, and a segment's first page repeats
the last bytes of the one before (which nobody reads there).

A roll, when the newest segment holds `segment_bytes` of data, goes:
1. the newest segment's next commit marks it rolled: the same position, ring and time, flagged;
2. the next segment's log is created at base = that position, and owned;
3. its first commit repeats the mark's fields, unflagged, one counter later;
4. the rolled segment is sealed (`Backend.seal`: a block blob on Azure) and given up.
A crash after 1 or 2 leaves the rolled segment's commit as the stream's: the next writer
finishes the roll; after 3 the stream reads on in the new segment, and an unsealed old one is
sealed by the next roll or opening. Nothing acknowledged moves: data is never rewritten.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from . import format as fmt
from .errors import CorruptDataError, FencedError, PositionTrimmed, StreamBusyError, check_int
from .stores.base import Backend, Buffer, LogSource, LogWriter, Segment

log = logging.getLogger("vault.segments")
SLOTS = 2 * fmt.SLOT_SIZE
OPEN_ATTEMPTS = 5  # a writer that opens while another rolls or trims lists the chain again
PARALLEL_SEGMENTS = 8  # segments one read asks at once


class SegmentLister(Protocol):
    """Where a stream's segments are: a backend, or what a read URL reaches."""

    def segments(self, stream: str) -> list[Segment]: ...

    def open_segment(self, stream: str, segment: Segment) -> LogSource: ...


def origin(base: int) -> int:
    """The stream position at the start of a segment's data region: its base, rounded down to a
    page."""
    return base - base % fmt.PAGE


def segment_length(base: int, end: int) -> int:
    """The bytes of a segment from `base` to `end` that hold anything: its slots and its data."""
    length = fmt.data_at(end) - origin(base)
    return length + -length % fmt.PAGE


def _commit_in(stream: str, slots: bytes) -> fmt.CommitRecord | None:
    """The commit in a segment's slots, or None if it has none (never written, or its first
    commit torn by a crash)."""
    try:
        commit = fmt.decode_commit_record(stream, slots)
    except CorruptDataError:
        return None
    return commit if commit.counter or commit.position else None


class _Chain:
    """The segments of one stream as last listed, each with its log open for reading, and reads
    of the stream's data across them."""

    def __init__(self, stream: str, lister: SegmentLister) -> None:
        self.stream = stream
        self._lister = lister
        self._lock = threading.Lock()
        self._segments: list[tuple[Segment, LogSource]] = []
        self._retired: list[LogSource] = []  # swapped out: closed at close(), reads may be in flight
        self._owned: set[int] = set()  # ids of the logs a writer owns (and closes) itself
        self._readers: ThreadPoolExecutor | None = None
        self._listed = False

    def segments(
        self, *, fresh: bool = False, listed: list[Segment] | None = None
    ) -> list[tuple[Segment, LogSource]]:
        """The segments as last listed; listed anew if `fresh` (or taken from `listed`, a listing
        the caller just made)."""
        with self._lock:
            if fresh or not self._listed or listed is not None:
                opened: dict[Segment, LogSource | None] = dict(self._segments)
                listed = self._lister.segments(self.stream) if listed is None else listed
                self._segments = [
                    (segment, opened.pop(segment, None) or self._open(segment)) for segment in listed
                ]
                self._retired.extend(source for source in opened.values() if source is not None)
                self._listed = bool(listed)  # a stream not made yet is looked for again next time
            return self._segments

    def _open(self, segment: Segment) -> LogSource:
        return self._lister.open_segment(self.stream, segment)

    def replace(self, segment: Segment, log: LogSource) -> None:
        """Read the segment at `segment.base` through `log` from now on: the writer's own log,
        which the writer closes, not the chain."""
        with self._lock:
            kept = [(s, src) for s, src in self._segments if s.base != segment.base]
            self._retired.extend(src for s, src in self._segments if s.base == segment.base)
            self._segments = sorted([*kept, (segment, log)], key=lambda item: item[0].base)
            self._owned.add(id(log))
            self._listed = True

    def first(self, *, fresh: bool = True) -> int:
        segments = self.segments(fresh=fresh)
        return segments[0][0].base if segments else 0

    def bases(self) -> list[int]:
        return [segment.base for segment, _source in self.segments(fresh=True)]

    def read_data(self, position: int, length: int) -> bytes:
        """Stream data [position, position + length), across segments; fewer bytes where the
        chain ends. PositionTrimmed below the first segment. A segment that is gone since it was
        listed (sealed into its final copy, or trimmed) has the chain listed once more."""
        for fresh in (False, True):
            segments = self.segments(fresh=fresh)
            if segments and position < segments[0][0].base:
                if fresh:
                    raise PositionTrimmed(self.stream, position, segments[0][0].base)
                continue
            data, vanished = self._read(segments, position, length)
            if not vanished:
                return data
        return data

    def _read(
        self, segments: list[tuple[Segment, LogSource]], position: int, length: int
    ) -> tuple[bytes, bool]:
        """The bytes, and whether a segment read nothing where it should have held some. A read
        across segments asks each of them at once: one blob serves only so fast."""
        index = max((i for i, (segment, _) in enumerate(segments) if segment.base <= position), default=-1)
        if index < 0:
            return b"", False
        pieces: list[tuple[LogSource, int, int, bool]] = []  # source, where, how much, is it the last
        while length > 0 and index < len(segments):
            segment, source = segments[index]
            following = segments[index + 1][0].base if index + 1 < len(segments) else None
            wanted = length if following is None else min(length, following - position)
            pieces.append(
                (source, fmt.DATA_START + position - origin(segment.base), wanted, following is None)
            )
            position += wanted
            length -= wanted
            index += 1
        if len(pieces) == 1:
            read = [pieces[0][0].read(pieces[0][1], pieces[0][2])]
        else:
            read = list(self._pool().map(lambda piece: piece[0].read(piece[1], piece[2]), pieces))
        parts: list[bytes] = []
        for (_source, _at, wanted, last), piece in zip(pieces, read, strict=True):
            if not piece and not last:
                return b"".join(parts), True
            parts.append(piece)
            if len(piece) < wanted:
                break
        return b"".join(parts), False

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._readers is None:
                self._readers = ThreadPoolExecutor(PARALLEL_SEGMENTS, thread_name_prefix="vault-segments")
            return self._readers

    def end(self) -> int:
        """The log's end in the format's addresses: its newest segment's end, at least its base
        (what lies below is in the segments before); 0 if the stream has no segment."""
        segments = self.segments(fresh=True)
        if not segments:
            return 0
        (segment, source), more = segments[-1], len(segments) > 1
        stored = source.size()
        return max(fmt.data_at(segment.base) if more or segment.base else 0, origin(segment.base) + stored)

    def close(self) -> None:
        with self._lock:
            for source in [source for _segment, source in self._segments] + self._retired:
                if id(source) not in self._owned:
                    source.close()
            self._segments, self._retired, self._listed = [], [], False
            if self._readers is not None:
                self._readers.shutdown()
                self._readers = None


class SegmentedSource:
    """A stream's segments read as one log (a `LogSource` in the format's addresses): the
    newest segment's commit slots at 0, the stream's data from DATA_START on."""

    def __init__(self, lister: SegmentLister, stream: str) -> None:
        self.stream = stream
        self._chain = _Chain(stream, lister)

    def read(self, start: int, length: int) -> bytes:
        if start >= fmt.DATA_START:
            return self._chain.read_data(start - fmt.DATA_START, length)
        head = self._commit_slots().ljust(fmt.DATA_START, b"\0")[start : start + length]  # then reserved
        if start + length <= fmt.DATA_START:
            return head.rstrip(b"\0") and head  # nothing at all for a stream that does not exist
        return head + self._chain.read_data(0, start + length - fmt.DATA_START)

    def _commit_slots(self) -> bytes:
        """The slots holding the stream's commit: the newest segment's, unless a roll was cut
        short before the new segment's first commit (then the rolled one's). One read while the
        newest segment stays the newest; a listing when its commit says it rolled."""
        segments = self._chain.segments()
        for attempt in range(OPEN_ATTEMPTS):
            if not segments:
                return b""
            slots = segments[-1][1].read(0, SLOTS)
            commit = _commit_in(self.stream, slots)
            if commit is None and len(segments) > 1:
                earlier = segments[-2][1].read(0, SLOTS)
                before = _commit_in(self.stream, earlier)
                if before is not None and before.rolled:
                    return earlier
                return slots  # a newest segment with damaged slots: the decoder says so
            if commit is None or not commit.rolled or attempt == OPEN_ATTEMPTS - 1:
                return slots
            listed = self._chain.segments(fresh=True)
            if listed[-1][0].base == segments[-1][0].base:
                return slots  # the next segment is not made yet: the stream ends here for now
            segments = listed
        return b""  # unreachable: the loop returns

    def first_position(self, *, fresh: bool = True) -> int:
        """Where the stream starts now: 0, or the base of its oldest segment left by trimming
        (`StreamLog.first_position`)."""
        return self._chain.first(fresh=fresh)

    def segment_bases(self) -> list[int]:
        """Where each segment starts, oldest first (listed anew)."""
        return self._chain.bases()

    def size(self) -> int:
        """The log's end in the format's addresses (0: the stream does not exist)."""
        return self._chain.end()

    def close(self) -> None:
        self._chain.close()


class SegmentedLog:
    """A stream's segments owned for writing, as one `LogWriter` in the format's addresses: data
    and commits go to the newest segment, whose ownership is the stream's; reads reach every
    segment. `roll` continues the stream in a new segment, `trim` removes old ones."""

    def __init__(self, backend: Backend, stream: str, *, lease_seconds: int, takeover: bool = False) -> None:
        self.stream = stream
        self.backend = backend
        self._lease_seconds = lease_seconds
        self._takeover = takeover
        self._chain = _Chain(stream, backend)
        # Sealing copies a whole segment (up to TiBs, server-side): it runs in a thread of its
        # own, one seal at a time, while appends go on in the new segment.
        self._sealer: ThreadPoolExecutor | None = None
        self._sealing: Future[None] | None = None
        self._active, self.base = self._open_newest()
        self.created = self._active.created and self.base == 0
        self.rolls = backend.can_roll(stream)  # a stream made before segments stays one
        try:
            self._finish_roll()
        except BaseException:
            self.close()
            raise

    def _open_newest(self) -> tuple[LogWriter, int]:
        for _ in range(OPEN_ATTEMPTS):
            segments = self.backend.segments(self.stream)
            base = segments[-1].base if segments else 0
            try:
                active = self.backend.open_log(
                    self.stream,
                    lease_seconds=self._lease_seconds,
                    takeover=self._takeover,
                    base=base,
                    create=not segments,
                )
            except FileNotFoundError:  # trimmed or sealed since it was listed: list again
                continue
            self._chain.segments(listed=segments or [Segment(0)])  # the listing just made
            self._chain.replace(Segment(base), active)
            return active, base
        raise StreamBusyError(f"stream {self.stream!r} keeps changing its segments under another writer")

    def _finish_roll(self) -> None:
        """Finish what a roll cut short left: a new segment with no commit yet, or a rolled newest
        segment with no next one; then seal any older segment still a writable log."""
        commit = _commit_in(self.stream, self._active.read(0, SLOTS))
        segments = self._chain.segments()
        if commit is None and len(segments) > 1:
            source = segments[-2][1]
            before = _commit_in(self.stream, source.read(0, SLOTS))
            if before is None or not before.rolled or self._has_data():
                raise CorruptDataError(self.stream, self.base, "the newest segment has no commit")
            self._first_commit(before)
        elif commit is not None and commit.rolled:
            self._continue(commit)
        self._in_background(self._seal_leftovers)

    def _has_data(self) -> bool:
        return bool(self._active.read(fmt.DATA_START, fmt.PAGE).strip(b"\0"))

    # --- LogWriter ---------------------------------------------------------------------------

    def read(self, start: int, length: int) -> bytes:
        if start < fmt.DATA_START:
            return self._active.read(start, length)
        return self._chain.read_data(start - fmt.DATA_START, length)

    def size(self) -> int:
        """The log's end in the format's addresses: the newest segment's end, and at least its
        base (what lies below is in the segments before)."""
        return max(fmt.data_at(self.base), origin(self.base) + self._active.size())

    def write(self, start: int, parts: Sequence[Buffer]) -> None:
        self._active.write(start - origin(self.base), parts)

    def write_commit_slot(self, start: int, record: bytes) -> None:
        self._active.write_commit_slot(start, record)

    def refresh(self) -> None:
        """After a write whose outcome is unknown, which may have been a roll's."""
        self._active.refresh()
        self._finish_roll()

    def settle(self) -> None:
        """Wait for the seal in progress, if any (a roll seals the segment it left in the
        background)."""
        if self._sealing is not None:
            self._sealing.result()
            self._sealing = None

    def first_position(self, *, fresh: bool = True) -> int:
        return self._chain.first(fresh=fresh)

    def segment_bases(self) -> list[int]:
        return self._chain.bases()

    # --- rolling and trimming ----------------------------------------------------------------

    def roll(self, commit: fmt.CommitRecord, *, then: Callable[[], None] | None = None) -> fmt.CommitRecord:
        """Continue the stream in a new segment at `commit.position`, the current commit; the new
        segment's first commit, which the writer goes on from. The old segment is sealed in the
        background, and `then` called after (from that thread)."""
        mark = commit._replace(counter=commit.counter + 1, flags=fmt.COMMIT_ROLLED)
        self._active.write_commit_slot(fmt.COMMIT_SLOTS[mark.counter % 2], fmt.encode_commit_record(mark))
        return self._continue(mark, then)

    def _continue(self, mark: fmt.CommitRecord, then: Callable[[], None] | None = None) -> fmt.CommitRecord:
        self.settle()  # the seal before is done: one at a time, and the chain is ours to change
        old, old_base = self._active, self.base
        try:
            new = self.backend.open_log(self.stream, lease_seconds=self._lease_seconds, base=mark.position)
        except StreamBusyError as error:
            raise FencedError(
                f"the writer of stream {self.stream!r} lost ownership: another writer took the stream "
                "over while it rolled into a new segment; stop and open a new writer"
            ) from error
        self._active, self.base = new, mark.position
        self._chain.replace(Segment(mark.position), new)
        first = _commit_in(self.stream, new.read(0, SLOTS))
        if first is None:
            first = self._first_commit(mark)

        def seal() -> None:
            self._seal(old, old_base, mark.position)
            if then is not None:
                then()

        self._in_background(seal)
        return first

    def _in_background(self, work: Callable[[], None]) -> None:
        """Run `work` in the sealing thread, after what runs there already. What it does leaves
        the stream whole whether it succeeds or not: a failure is only logged."""

        def logged() -> None:
            try:
                work()
            except Exception as error:
                log.warning("stream %r: sealing or trimming failed for now: %s", self.stream, error)

        if self._sealer is None:
            self._sealer = ThreadPoolExecutor(1, thread_name_prefix="vault-sealing")
        self._sealing = self._sealer.submit(logged)

    def _first_commit(self, mark: fmt.CommitRecord) -> fmt.CommitRecord:
        first = mark._replace(counter=mark.counter + 1, flags=0)
        self._active.write_commit_slot(fmt.COMMIT_SLOTS[first.counter % 2], fmt.encode_commit_record(first))
        return first

    def _seal(self, owned: LogWriter, base: int, end: int) -> None:
        """Seal a rolled segment; if storage fails, it stays a log for the next roll to seal."""
        try:
            self.backend.seal(self.stream, owned, base, segment_length(base, end))
            self._chain.segments(fresh=True)
            self._chain.replace(Segment(self.base), self._active)
        except Exception as error:  # the stream is whole either way
            log.warning("stream %r: segment %d stays unsealed for now: %s", self.stream, base, error)
        finally:
            owned.close()

    def _seal_leftovers(self) -> None:
        segments = self._chain.segments()
        for (segment, _source), (following, _) in itertools.pairwise(segments):
            if segment.sealed:
                continue
            try:
                owned = self.backend.open_log(
                    self.stream,
                    lease_seconds=self._lease_seconds,
                    takeover=self._takeover,
                    base=segment.base,
                    create=False,
                )
            except (FileNotFoundError, StreamBusyError):
                continue  # sealed meanwhile, or still held by a writer that died: the next time
            self._seal(owned, segment.base, following.base)

    def trim(self, before: int) -> int:
        """Remove the segments that lie wholly below `before` (`trim`); the first position after."""
        first = trim(
            self.backend, self.stream, before, segments=[s for s, _ in self._chain.segments(fresh=True)]
        )
        self._chain.segments(fresh=True)
        self._chain.replace(Segment(self.base), self._active)
        return first

    def discard(self) -> None:
        """Remove the stream's every segment, the newest (owned) last."""
        self.settle()
        for segment, _source in self._chain.segments(fresh=True):
            if segment.base != self.base:
                self.backend.delete_segment(self.stream, segment)
        self._active.discard()
        self._chain.close()
        self.backend.stream_removed(self.stream)

    def close(self) -> None:
        """Close the log, once the seal in progress is done."""
        try:
            self.settle()
        finally:
            if self._sealer is not None:
                self._sealer.shutdown()
            self._active.close()
            self._chain.close()


def trim(
    backend: Backend,
    stream: str,
    before: int,
    *,
    dry_run: bool = False,
    segments: list[Segment] | None = None,
) -> int:
    """Remove the stream's sealed segments that lie wholly below `before`, oldest first: never
    the newest, and none from the first that is not sealed yet on (a seal in progress), so the
    chain left is whole. The stream's first position after (with `dry_run`, what it would be,
    nothing removed). Needs no ownership of the stream: its writer appends to the newest segment
    only. `segments`: the listing the caller just made."""
    if check_int("before", before) < 0:
        raise ValueError(f"before must be a position of the stream, got {before}")
    chain = backend.segments(stream) if segments is None else segments
    removable = list(
        itertools.takewhile(lambda pair: pair[1].base <= before and pair[0].sealed, itertools.pairwise(chain))
    )
    if dry_run:
        return removable[-1][1].base if removable else (chain[0].base if chain else 0)
    for segment, _following in removable:
        backend.delete_segment(stream, segment)
    left = backend.segments(stream) if removable else chain
    return left[0].base if left else 0
