"""Streams in this process's memory: `open_store("memory:")` (a store of its own) or
`open_store("memory:NAME")` (the one store of that name in this process, shared by every call).

The same seam as the other backends, kept as they keep it: one live writer per stream (another
gets StreamBusyError; `takeover` fences the old one, whose next write raises FencedError and
changes nothing), commit slots written whole, readers that see only what was written. Nothing
outlives the process: for tests of what sits above the seam, and for code that wants a vault
without a disk.
"""

from __future__ import annotations

import threading
import time
import uuid
import weakref
from collections.abc import Sequence
from datetime import timedelta

from .. import metrics
from ..checkpoints import Checkpoint, CheckpointConflict, Checkpoints, checkpoint_time
from ..errors import FencedError, StreamBusyError
from ..format import check_stream_name
from .base import Backend, Buffer, LogSource, LogWriter, Segment, StreamLog

SCHEME = "memory:"
# The stores named in this process: strongly held, since a name says "the same store again".
_named: dict[str, MemoryStore] = {}
# Every store by name, for read URLs: an unnamed store goes when its last user lets it go.
_all: weakref.WeakValueDictionary[str, MemoryStore] = weakref.WeakValueDictionary()
_registry_lock = threading.Lock()


def memory_store(target: str) -> MemoryStore:
    """The store `memory:` (a new one) or `memory:NAME` names."""
    name = target[len(SCHEME) :]
    with _registry_lock:
        if not name:
            store = MemoryStore(f"anonymous-{uuid.uuid4().hex}")
        elif name in _named:
            return _named[name]
        else:
            store = _named[name] = MemoryStore(name)
        _all[store.name] = store
        return store


def source_from_url(url: str) -> tuple[str, StreamLog]:
    """The stream name and log of a read URL made by `MemoryStore.read_url`, in this process."""
    where, _, stream = url[len(SCHEME) :].rpartition("/")
    with _registry_lock:
        store = _all.get(where)
    if store is None:
        raise ValueError(f"no memory store {where!r} in this process: {url!r} reads nothing here")
    from ..segments import SegmentedSource

    return check_stream_name(stream), SegmentedSource(store, stream)


class _Log:
    """One stream's bytes, and who owns it: a token that each new owner replaces."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.owner: object | None = None


class MemoryStore(Backend):
    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()  # guards the logs' bytes and owners, and the objects
        self._logs: dict[tuple[str, int], _Log] = {}  # (stream, segment base) -> its log
        self._objects: dict[str, bytes] = {}
        self._groups: dict[str, _GroupState] = {}

    def __repr__(self) -> str:
        return f"MemoryStore({self.name!r})"

    def __str__(self) -> str:
        return f"{SCHEME}{self.name}"

    def exists(self) -> bool:
        return True

    def streams(self) -> list[str]:
        with self._lock:
            return sorted({stream for stream, _base in self._logs})

    def segments(self, stream: str) -> list[Segment]:
        with self._lock:
            bases = sorted(base for name, base in self._logs if name == stream)
        return [Segment(base, sealed=base != bases[-1]) for base in bases]  # only the newest is written

    def open_log(
        self, stream: str, *, lease_seconds: int, takeover: bool = False, base: int = 0, create: bool = True
    ) -> LogWriter:
        # lease_seconds has no meaning here: an owner holds its stream until it closes it.
        with self._lock:
            log = self._logs.get((stream, base))
            created = log is None
            if log is None:
                if not create:
                    raise FileNotFoundError(f"stream {stream!r} has no segment at {base} in {self}")
                log = self._logs[stream, base] = _Log()
            elif log.owner is not None:
                if not takeover:
                    raise StreamBusyError(f"stream {stream!r} has another live writer in {self}")
                metrics.writer_takeovers.add(1, {"stream": stream})
            token = log.owner = object()
        return MemoryLog(self, (stream, base), log, token, created)

    def open_segment(self, stream: str, segment: Segment) -> LogSource:
        return MemorySource(self, (stream, segment.base))

    def delete_segment(self, stream: str, segment: Segment) -> None:
        with self._lock:
            self._logs.pop((stream, segment.base), None)

    def read_url(self, stream: str, *, expires_in: timedelta = timedelta(hours=1)) -> str:
        check_stream_name(stream)
        return f"{SCHEME}{self.name}/{stream}"  # good in this process only, for as long as it runs

    def write_file(self, name: str, data: bytes) -> None:
        with self._lock:
            self._objects[name] = bytes(data)

    def read_file(self, name: str) -> bytes:
        with self._lock:
            try:
                return self._objects[name]
            except KeyError:
                raise FileNotFoundError(f"no object {name!r} in {self}") from None

    def delete_file(self, name: str) -> None:
        with self._lock:
            self._objects.pop(name, None)

    def consumer_groups(self) -> list[str]:
        with self._lock:
            return sorted(group for group, state in self._groups.items() if state.checkpoints)

    def checkpoints(self, group: str) -> Checkpoints:
        checkpoints = MemoryCheckpoints(group)  # checks the name before the state is made
        with self._lock:
            checkpoints.state = self._groups.setdefault(checkpoints.group, _GroupState())
        return checkpoints

    def _bytes(self, key: tuple[str, int], start: int, length: int) -> bytes:
        with self._lock:
            log = self._logs.get(key)
            return b"" if log is None else bytes(log.data[start : start + length])

    def _size(self, key: tuple[str, int]) -> int:
        with self._lock:
            log = self._logs.get(key)
            return 0 if log is None else len(log.data)


class MemorySource:
    """A stream's segment, read-only: what the owners wrote, as they wrote it."""

    def __init__(self, store: MemoryStore, key: tuple[str, int]) -> None:
        self._store = store
        self._key = key
        self._stream = key[0]

    def read(self, start: int, length: int) -> bytes:
        return self._store._bytes(self._key, start, length)

    def size(self) -> int:
        return self._store._size(self._key)

    def close(self) -> None:
        """Nothing to release."""


class MemoryLog(MemorySource):
    """A stream's log while this writer owns it: every write is checked against the owner, under
    the store's lock, so a fenced writer changes nothing."""

    def __init__(
        self, store: MemoryStore, key: tuple[str, int], log: _Log, token: object, created: bool
    ) -> None:
        super().__init__(store, key)
        self._log = log
        self._token = token
        self.created = created

    def write(self, start: int, parts: Sequence[Buffer]) -> None:
        data = b"".join(parts)
        with self._store._lock:
            self._check_owner()
            if len(self._log.data) < start:
                self._log.data.extend(bytes(start - len(self._log.data)))
            self._log.data[start : start + len(data)] = data

    def write_commit_slot(self, start: int, record: bytes) -> None:
        self.write(start, [record])  # under the lock: whole, or (fenced) not at all

    def refresh(self) -> None:
        """Nothing to re-learn: every write either completed or raised."""

    def discard(self) -> None:
        with self._store._lock:
            if self._log.owner is self._token and self._store._logs.get(self._key) is self._log:
                del self._store._logs[self._key]
        self.close()

    def close(self) -> None:
        with self._store._lock:
            if self._log.owner is self._token:
                self._log.owner = None

    def _check_owner(self) -> None:
        if self._log.owner is not self._token or self._store._logs.get(self._key) is not self._log:
            raise FencedError(f"stream {self._stream!r} in {self._store} was taken over by another writer")


class _GroupState:
    """One consumer group's checkpoints and claims."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.checkpoints: dict[str, Checkpoint] = {}
        self.claims: dict[str, tuple[str, float]] = {}  # stream -> (owner, expires)


class MemoryCheckpoints(Checkpoints):
    state: _GroupState

    def _get(self, stream: str) -> Checkpoint | None:
        with self.state.lock:
            return self.state.checkpoints.get(stream)

    def _save(self, stream: str, position: int, expected: Checkpoint | None) -> Checkpoint:
        with self.state.lock:
            current = self.state.checkpoints.get(stream)
            if (current.etag if current else None) != (expected.etag if expected else None):
                raise CheckpointConflict(self.group, stream, current, expected)
            saved = Checkpoint(self.group, stream, position, uuid.uuid4().hex, checkpoint_time())
            self.state.checkpoints[stream] = saved
            return saved

    def _all(self) -> list[Checkpoint]:
        with self.state.lock:
            return list(self.state.checkpoints.values())

    def _claim(self, stream: str, owner: str, expires: float) -> bool:
        with self.state.lock:
            held = self.state.claims.get(stream)
            if held is not None and held[0] != owner and held[1] > time.time():
                return False
            self.state.claims[stream] = (owner, expires)
            return True

    def _release(self, stream: str, owner: str) -> None:
        with self.state.lock:
            if self.state.claims.get(stream, ("", 0.0))[0] == owner:
                del self.state.claims[stream]

    def _forget(self, stream: str) -> None:
        with self.state.lock:
            self.state.checkpoints.pop(stream, None)
            self.state.claims.pop(stream, None)
