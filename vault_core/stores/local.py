"""The embedded store: a directory with one folder per stream, each holding its segments as files
(`log`, then `log.<base>`: `segment_name`) whose bytes are identical to the blobs of the same
stream. An OS file lock is the lease.

Streams may hold private data: folders are made readable by their owner only (0700), files
likewise (0600), whatever the umask. A full disk and a refused permission are `StoreFull` and
`StoreAccessDenied`, naming the path."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from ..checkpoints import GROUP_NAME, Checkpoint, CheckpointConflict, Checkpoints, checkpoint_time
from ..errors import (
    StoreAccessDenied,
    StoreFull,
    StoreNotFound,
    StreamBusyError,
    VaultError,
)
from ..format import check_stream_name
from .base import (
    FIRST_SEGMENT,
    Backend,
    Buffer,
    LogSource,
    LogWriter,
    Segment,
    StreamLog,
    segment_base,
    segment_name,
)

CHECKPOINT_FOLDER = "_checkpoints"  # not a valid stream name, so never listed as a stream
OWNER_SUFFIX = ".owner"  # beside <stream>.json: which consumer of the group holds the stream
FOLDER_MODE, FILE_MODE = 0o700, 0o600
_IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024


class LocalStore(Backend):
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def __str__(self) -> str:
        return str(self.root)

    def exists(self) -> bool:
        return self.root.is_dir()

    def streams(self) -> list[str]:
        if not self.root.is_dir():
            return []
        names = []
        for entry in self.root.iterdir():
            try:
                check_stream_name(entry.name)
            except ValueError:
                continue
            if _segments_in(entry):
                names.append(entry.name)
        return sorted(names)

    def segments(self, stream: str) -> list[Segment]:
        return _segments_in(self.root / stream)

    def open_log(
        self, stream: str, *, lease_seconds: int, takeover: bool = False, base: int = 0, create: bool = True
    ) -> LogWriter:
        # lease_seconds and takeover have no meaning here: the OS releases the lock the moment its
        # holder dies, and a live (even frozen) holder cannot be fenced, so it keeps the stream.
        folder = self.root / stream
        path = folder / segment_name(base)
        if not create:
            return LocalLog(path, stream, create=False)
        self._make_root()
        with disk_errors(folder, "create the stream folder"):
            folder_created = not folder.exists()
            folder.mkdir(mode=FOLDER_MODE, exist_ok=True)
        log = LocalLog(path, stream)
        if folder_created:  # make the new folder survive a crash
            fsync_dir(self.root)
        return log

    def open_segment(self, stream: str, segment: Segment) -> LogSource:
        return LocalSource(self.root / stream / segment_name(segment.base))

    def delete_segment(self, stream: str, segment: Segment) -> None:
        path = self.root / stream / segment_name(segment.base)
        with disk_errors(path, "delete"):
            path.unlink(missing_ok=True)
            fsync_dir(path.parent)

    def _make_root(self) -> None:
        """The store's folder, made if its parent exists: a mistyped path is not a new tree."""
        if self.root.is_dir():
            return
        if not self.root.parent.is_dir():
            raise StoreNotFound(
                f"no store at {self.root}, and its parent folder {self.root.parent} does not exist "
                "either: check the path, or create the parent first"
            )
        with disk_errors(self.root, "create the store folder"):
            self.root.mkdir(mode=FOLDER_MODE, exist_ok=True)

    def read_url(self, stream: str, *, expires_in: timedelta = timedelta(hours=1)) -> str:
        """The stream's first segment file as a file:// URL: read through vault_core, it reads
        every segment in that folder."""
        check_stream_name(stream)
        return (self.root / stream / FIRST_SEGMENT).resolve().as_uri()

    def write_file(self, name: str, data: bytes) -> None:
        self._make_root()
        path = self._object_path(name)
        with disk_errors(path, "write"):
            for folder in reversed(path.parents):
                if folder.is_relative_to(self.root) and folder != self.root:
                    folder.mkdir(mode=FOLDER_MODE, exist_ok=True)
            partial = path.with_name(path.name + ".partial")
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
            with open(fd, "wb") as file:
                file.write(data)
            os.replace(partial, path)  # readers see all of it or none

    def read_file(self, name: str) -> bytes:
        path = self._object_path(name)
        with disk_errors(path, "read"):
            return path.read_bytes()

    def delete_file(self, name: str) -> None:
        path = self._object_path(name)
        with disk_errors(path, "delete"):
            path.unlink(missing_ok=True)

    def consumer_groups(self) -> list[str]:
        return FileCheckpoints.groups(self.root)

    def checkpoints(self, group: str) -> Checkpoints:
        """Files `<root>/_checkpoints/<group>/<stream>.json`."""
        return FileCheckpoints(self.root, group)

    def _object_path(self, name: str) -> Path:
        # Objects live under a folder whose name is not a valid stream name.
        parts = [p for p in name.split("/") if p not in ("", ".", "..")]
        if not parts:
            raise ValueError(f"invalid object name {name!r}")
        return self.root.joinpath("_objects", *parts)


@contextlib.contextmanager
def disk_errors(path: Path, doing: str) -> Iterator[None]:
    """A full disk or a refused permission as the StoreError that says what to do; any other
    OSError as it is."""
    try:
        yield
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreFull(
                f"no space left on the device of {path}: free some space, then retry (an append "
                "retried with its batch id is stored once)"
            ) from error
        if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise StoreAccessDenied(
                f"cannot {doing} {path}: {error.strerror}; check that this user may read and write it"
            ) from error
        raise


class LocalSource:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def read(self, start: int, length: int) -> bytes:
        if self._fd is None:
            try:
                with disk_errors(self.path, "read"):
                    self._fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                return b""
        return _pread(self._fd, start, length)

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class LocalLog:
    """A stream's log file, locked for writing. Data is fsynced before the commit slot is written,
    and the commit slot is fsynced before an append returns."""

    def __init__(self, path: Path, stream: str, *, create: bool = True) -> None:
        self.path = path
        with disk_errors(path, "open"):
            self._fd, self.created = _open_locked(path, stream, create=create)
        if self.created:  # make the new file survive a crash
            fsync_dir(path.parent)

    def read(self, start: int, length: int) -> bytes:
        return _pread(self._fd, start, length)

    def size(self) -> int:
        with disk_errors(self.path, "read"):
            return os.fstat(self._fd).st_size

    def write(self, start: int, parts: Sequence[Buffer]) -> None:
        self._pwrite(start, parts)

    def write_commit_slot(self, start: int, record: bytes) -> None:
        self._pwrite(start, [record])

    def _pwrite(self, start: int, parts: Sequence[Buffer]) -> None:
        """Write the parts end to end (gathered by the kernel, not copied here), then fdatasync."""
        if self._fd < 0:
            raise VaultError(f"log {self.path} is closed")
        views = [memoryview(part) for part in parts if len(part)]
        first = 0
        with disk_errors(self.path, "write"):
            while first < len(views):
                written = os.pwritev(self._fd, views[first : first + _IOV_MAX], start)
                start += written
                while first < len(views) and written >= len(views[first]):
                    written -= len(views[first])
                    first += 1
                if written:  # a short write: resume inside this part
                    views[first] = views[first][written:]
            os.fdatasync(self._fd)

    def refresh(self) -> None:
        """Nothing to re-learn: every write either completed or raised."""

    def discard(self) -> None:
        """Remove the log (its stream had nothing committed), then give up the lock."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # releases the lock
            self._fd = -1


def _open_locked(path: Path, stream: str, *, create: bool = True) -> tuple[int, bool]:
    """The log file, open and locked, and whether this call created it (FileNotFoundError if there
    is none and not `create`). A log discarded by its previous holder while we waited is not the
    one at `path` any more: open that one instead."""
    for _ in range(100):
        try:
            if not create:
                fd, created = os.open(path, os.O_RDWR), False
            else:
                fd, created = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE), True
        except FileExistsError:
            try:
                fd, created = os.open(path, os.O_RDWR), False
            except FileNotFoundError:  # discarded between the two opens
                continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EAGAIN, errno.EACCES):
                raise StreamBusyError(
                    f"stream {stream!r} has another live writer (lock on {path} is held)"
                ) from None
            raise
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd, created
        except FileNotFoundError:
            pass
        os.close(fd)
    raise StreamBusyError(f"stream {stream!r} keeps being created and removed by another writer")


def _pread(fd: int, start: int, length: int) -> bytes:
    data = os.pread(fd, length, start)
    if len(data) == length or not data:
        return data
    parts = [data]
    got = len(data)
    while got < length:
        more = os.pread(fd, length - got, start + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a file created or renamed in it) survive a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _segments_in(folder: Path) -> list[Segment]:
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    bases = sorted(base for base in map(segment_base, names) if base is not None)
    # A file is final once a newer segment follows it: sealed, as far as a local store goes.
    return [Segment(base, sealed=base != bases[-1]) for base in bases]


def source_from_url(url: str) -> tuple[str, StreamLog]:
    """The stream name and log of a file:// read URL made by `LocalStore.read_url`: the stream's
    folder (`.../<stream>/`), or its first segment file (`.../<stream>/log`, as read URLs were)."""
    from ..segments import SegmentedSource

    path = Path(unquote(urlparse(url).path))
    if path.name == FIRST_SEGMENT:
        path = path.parent
    elif not urlparse(url).path.endswith("/"):
        raise ValueError(f"not a stream read URL: {url!r} (expected .../<stream>/)")
    stream = check_stream_name(path.name)
    return stream, SegmentedSource(LocalStore(path.parent), stream)


class FileCheckpoints(Checkpoints):
    """Checkpoints as files `<root>/_checkpoints/<group>/<stream>.json`, claims on streams beside
    them (`<stream>.owner`). Saves of one group take turns under a lock on a file in its folder
    (threads and processes alike); each replaces the file whole, so a reader never sees half of
    one."""

    @staticmethod
    def groups(root: str | os.PathLike[str]) -> list[str]:
        """The consumer groups with checkpoints in the store at `root`."""
        folder = Path(root) / CHECKPOINT_FOLDER
        if not folder.is_dir():
            return []
        return sorted(
            entry.name
            for entry in folder.iterdir()
            if GROUP_NAME.fullmatch(entry.name) and any(entry.glob("*.json"))
        )

    def __init__(self, root: str | os.PathLike[str], group: str) -> None:
        super().__init__(group)
        self.folder = Path(root) / CHECKPOINT_FOLDER / self.group

    def __repr__(self) -> str:
        return f"FileCheckpoints({str(self.folder)!r})"

    def _get(self, stream: str) -> Checkpoint | None:
        path = self.folder / f"{stream}.json"
        try:
            data = json.loads(path.read_bytes())
            return Checkpoint(
                self.group, stream, data["position"], data["etag"], datetime.fromisoformat(data["updated"])
            )
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as error:
            raise VaultError(f"checkpoint file {path} is unreadable: {error!r}") from error

    def _all(self) -> list[Checkpoint]:
        if not self.folder.is_dir():
            return []
        found = [self._get(path.name[: -len(".json")]) for path in self.folder.glob("*.json")]
        return [checkpoint for checkpoint in found if checkpoint is not None]

    def _save(self, stream: str, position: int, expected: Checkpoint | None) -> Checkpoint:
        with self._locked():
            current = self._get(stream)
            if (current.etag if current else None) != (expected.etag if expected else None):
                raise CheckpointConflict(self.group, stream, current, expected)
            # A fresh token, not a counter: a checkpoint deleted and saved again never matches an
            # ETag from before.
            checkpoint = Checkpoint(self.group, stream, position, uuid.uuid4().hex, checkpoint_time())
            data = {"position": position, "etag": checkpoint.etag, "updated": checkpoint.updated.isoformat()}
            self._replace(self.folder / f"{stream}.json", data)
        return checkpoint

    def _claim(self, stream: str, owner: str, expires: float) -> bool:
        path = self.folder / f"{stream}{OWNER_SUFFIX}"
        with self._locked():
            with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
                held = json.loads(path.read_bytes())
                if held["owner"] != owner and held["expires"] > time.time():
                    return False
            self._replace(path, {"owner": owner, "expires": expires})
        return True

    def _release(self, stream: str, owner: str) -> None:
        path = self.folder / f"{stream}{OWNER_SUFFIX}"
        with self._locked(), contextlib.suppress(FileNotFoundError, ValueError, KeyError):
            if json.loads(path.read_bytes())["owner"] == owner:
                path.unlink()

    def _forget(self, stream: str) -> None:
        with self._locked():
            for path in (self.folder / f"{stream}.json", self.folder / f"{stream}{OWNER_SUFFIX}"):
                with disk_errors(path, "delete"):
                    path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The group's lock (threads and processes take turns), its folder made first."""
        if not self.folder.is_dir():
            for folder in (self.folder.parent.parent, self.folder.parent, self.folder):
                folder.mkdir(mode=FOLDER_MODE, exist_ok=True)
            for folder in (self.folder.parent, self.folder.parent.parent):
                fsync_dir(folder)  # the new folders survive a crash with the first checkpoint
        lock = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield
        finally:
            os.close(lock)  # releases the lock

    def _replace(self, path: Path, data: dict[str, Any]) -> None:
        """Replace the file whole: readers see the old contents or the new, never half."""
        partial = path.with_name(path.name + ".partial")
        with open(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE), "w") as file:
            json.dump(data, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
        fsync_dir(self.folder)
