"""The embedded store: a directory with one folder per stream, each holding a `log` file whose
bytes are identical to the page blob of the same stream. An OS file lock is the lease."""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from ..errors import StreamBusyError, VaultError
from ..format import check_stream_name
from .base import LogSource, LogWriter, Store

if TYPE_CHECKING:
    from ..checkpoints import Checkpoints

LOG_FILE = "log"
_IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024


class LocalStore(Store):
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def __str__(self) -> str:
        return str(self.root)

    def streams(self) -> list[str]:
        if not self.root.is_dir():
            return []
        names = []
        for entry in self.root.iterdir():
            try:
                check_stream_name(entry.name)
            except ValueError:
                continue
            if (entry / LOG_FILE).is_file():
                names.append(entry.name)
        return sorted(names)

    def open_log(self, stream: str, *, lease_seconds: int, takeover: bool = False) -> LogWriter:
        # lease_seconds and takeover have no meaning here: the OS releases the lock the moment its
        # holder dies, and a live (even frozen) holder cannot be fenced, so it keeps the stream.
        folder = self.root / stream
        created = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        return LocalLog(folder / LOG_FILE, stream, created=created)

    def open_source(self, stream: str) -> LogSource:
        return LocalSource(self.root / stream / LOG_FILE)

    def read_url(self, stream: str, *, expires_in: timedelta = timedelta(hours=1)) -> str:
        check_stream_name(stream)
        return (self.root / stream / LOG_FILE).resolve().as_uri()

    def put_object(self, name: str, data: bytes) -> None:
        path = self._object_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_bytes(data)
        os.replace(partial, path)  # readers see all of it or none

    def get_object(self, name: str) -> bytes:
        return self._object_path(name).read_bytes()

    def delete_object(self, name: str) -> None:
        self._object_path(name).unlink(missing_ok=True)

    def checkpoints(self, group: str) -> Checkpoints:
        """Files `<root>/_checkpoints/<group>/<stream>.json`."""
        from ..checkpoints import FileCheckpoints

        return FileCheckpoints(self.root, group)

    def _object_path(self, name: str) -> Path:
        # Objects live under a folder whose name is not a valid stream name.
        parts = [p for p in name.split("/") if p not in ("", ".", "..")]
        if not parts:
            raise ValueError(f"invalid object name {name!r}")
        return self.root.joinpath("_objects", *parts)


class LocalSource:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def read(self, start: int, length: int) -> bytes:
        if self._fd is None:
            try:
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

    def __init__(self, path: Path, stream: str, *, created: bool) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(self._fd)
            if error.errno in (errno.EAGAIN, errno.EACCES):
                raise StreamBusyError(
                    f"stream {stream!r} has another live writer (lock on {path} is held)"
                ) from None
            raise
        if created:  # make the new folder and file survive a crash
            fsync_dir(path.parent)
            fsync_dir(path.parent.parent)

    def read(self, start: int, length: int) -> bytes:
        return _pread(self._fd, start, length)

    def write(self, start: int, parts: Sequence[bytes | bytearray]) -> None:
        self._pwrite(start, parts)

    def commit(self, start: int, record: bytes) -> None:
        self._pwrite(start, [record])

    def _pwrite(self, start: int, parts: Sequence[bytes | bytearray]) -> None:
        """Write the parts end to end (gathered by the kernel, not copied here), then fdatasync."""
        if self._fd < 0:
            raise VaultError(f"log {self.path} is closed")
        views = [memoryview(part) for part in parts if len(part)]
        first = 0
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

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # releases the lock
            self._fd = -1


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


def source_from_url(url: str) -> tuple[str, LogSource]:
    """The stream name and log of a file:// read URL made by `LocalStore.read_url`."""
    path = Path(unquote(urlparse(url).path))
    if path.name != LOG_FILE:
        raise ValueError(f"not a stream read URL: {url!r} (expected .../<stream>/{LOG_FILE})")
    return check_stream_name(path.parent.name), LocalSource(path)
