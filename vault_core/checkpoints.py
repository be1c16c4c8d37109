"""Consumer checkpoints: per consumer group and stream, the next position to read.

The backends live with their stores: on Azure, entities of one table (`vaultcheckpoints`) in the
store's account (stores/tables.py); on the local store, small JSON files beside the streams
(stores/local.py). Every save is a compare-and-swap on the ETag of the
checkpoint the consumer last saw, so two consumers of one group cannot silently overwrite each
other: the later one gets CheckpointConflict.
"""

from __future__ import annotations

import abc
import re
import time
from datetime import UTC, datetime
from typing import NamedTuple

from .errors import VaultError, check_int
from .format import check_stream_name

MAX_POSITION = 2**63 - 1  # a table stores it as Edm.Int64
GROUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class Checkpoint(NamedTuple):
    group: str
    stream: str
    position: int  # the next position to read
    etag: str  # this version of the checkpoint; every save changes it
    updated: datetime  # when it was saved (UTC)


def check_group_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"consumer group name must be a string, got {type(name).__name__}")
    if not GROUP_NAME.fullmatch(name):
        raise ValueError(
            f"invalid consumer group name {name!r}: use 1-128 letters, digits and ._- starting with "
            "a letter or digit"
        )
    return name


def _check_position(position: object) -> int:
    checked = check_int("checkpoint position", position)
    if not 0 <= checked <= MAX_POSITION:
        raise ValueError(f"checkpoint position must be 0 to 2**63 - 1, got {checked}")
    return checked


class CheckpointConflict(VaultError):
    """A consumer group's checkpoint is not where this consumer last saw it: another consumer of
    the group moved it. `current` is the checkpoint as stored now (None if there is none)."""

    def __init__(
        self, group: str, stream: str, current: Checkpoint | None, expected: Checkpoint | None
    ) -> None:
        now = "it has none now" if current is None else f"it is now at position {current.position}"
        was = "none" if expected is None else f"position {expected.position}"
        super().__init__(
            f"checkpoint of group {group!r} on stream {stream!r} was moved by another consumer of the "
            f"group: {now} (this consumer expected {was}). Stop this consumer, or re-read the checkpoint "
            "and resume from there."
        )
        self.group = group
        self.stream = stream
        self.current = current
        self.expected = expected


class Checkpoints(abc.ABC):
    """The checkpoints of one consumer group, one per stream it reads."""

    def __init__(self, group: str) -> None:
        self.group = check_group_name(group)

    def get(self, stream: str) -> Checkpoint | None:
        """The group's checkpoint on `stream`, or None if it has none yet."""
        return self._get(check_stream_name(stream))

    def save(self, stream: str, position: int, *, expected: Checkpoint | None) -> Checkpoint:
        """Move the group's checkpoint on `stream` to `position`, only if it is still `expected`
        (None: only if it has none yet). CheckpointConflict if another consumer of the group
        moved it since."""
        check_stream_name(stream)
        _check_position(position)
        if expected is not None and (
            not isinstance(expected, Checkpoint) or (expected.group, expected.stream) != (self.group, stream)
        ):
            raise ValueError(
                f"expected must be group {self.group!r}'s checkpoint on stream {stream!r} (or None), "
                f"got {expected!r}"
            )
        return self._save(stream, position, expected)

    def all(self) -> list[Checkpoint]:
        """The group's checkpoints, one per stream it has read, sorted by stream."""
        return sorted(self._all(), key=lambda checkpoint: checkpoint.stream)

    def claim(self, stream: str, owner: str, lease_seconds: float) -> bool:
        """Take, or keep, the group's ownership of `stream` for `owner` for `lease_seconds` from
        now: True if `owner` holds it now, False while another owner's claim runs. A claim that is
        not renewed runs out (its consumer died), and the next claim takes it."""
        check_stream_name(stream)
        return self._claim(stream, owner, time.time() + lease_seconds)

    def release(self, stream: str, owner: str) -> None:
        """Give up `owner`'s claim on `stream`, if it still holds it."""
        check_stream_name(stream)
        self._release(stream, owner)

    def forget(self, stream: str) -> None:
        """Remove the group's checkpoint and claim on `stream` (a stream deleted for good), so
        that a stream made again under its name is read from its start."""
        self._forget(check_stream_name(stream))

    @abc.abstractmethod
    def _get(self, stream: str) -> Checkpoint | None: ...

    @abc.abstractmethod
    def _forget(self, stream: str) -> None: ...

    @abc.abstractmethod
    def _save(self, stream: str, position: int, expected: Checkpoint | None) -> Checkpoint:
        """As `save`, the inputs checked."""

    @abc.abstractmethod
    def _all(self) -> list[Checkpoint]: ...

    @abc.abstractmethod
    def _claim(self, stream: str, owner: str, expires: float) -> bool:
        """As `claim`; `expires` in seconds since the epoch."""

    @abc.abstractmethod
    def _release(self, stream: str, owner: str) -> None: ...

    def close(self) -> None:  # noqa: B027 - backends with nothing to release keep this
        """Release connections."""

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def checkpoint_time() -> datetime:
    # Whole milliseconds, which every table service keeps exactly: a saved checkpoint equals the
    # one read back.
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)
