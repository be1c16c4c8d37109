"""The errors a caller of vault_core must be ready for. Every one is a `VaultError`."""

from __future__ import annotations

import re


class VaultError(Exception):
    """Base class of every error raised on purpose by vault_core."""


class StreamBusyError(VaultError):
    """Another live writer owns the stream (its lease or file lock is held)."""


class FencedError(VaultError):
    """This writer lost ownership of its stream and must stop; nothing more it writes is accepted."""


class StoreError(VaultError):
    """The store cannot do what was asked: it does not exist, it is full, or access is denied.
    The message names the place and what to do; nothing was appended."""


class StoreNotFound(StoreError):
    """The store (a directory, a blob container) or the stream asked for does not exist."""


class StoreFull(StoreError):
    """The disk under a local store is full. Free space and retry: an append retried with its
    batch id is stored once."""


class StoreAccessDenied(StoreError):
    """The operating system or the storage service refused access to the store."""


class ReadUrlExpired(StoreAccessDenied):
    """Storage refused a stream's read URL (a SAS URL): it expired, or may have (storage answers
    an expired SAS as it does any refused one). `GET /api/streams/{stream}` gives a fresh one, and
    `vault_core.open_reader` given the stream's API URL renews it as it goes."""


class CorruptDataError(VaultError):
    """Stored bytes failed their checksum or structure check; `position` says where."""

    def __init__(self, stream: str, position: int, detail: str) -> None:
        super().__init__(f"stream {stream!r} is damaged at position {position}: {detail}")
        self.stream = stream
        self.position = position
        self.detail = detail


class UnknownFormatVersion(CorruptDataError):
    """An intact commit slot (its checksum holds) is in a format version this reader does not
    know: the stream was written by a newer Message Vault, which is needed to read it."""

    def __init__(self, stream: str, position: int, detail: str, version: int) -> None:
        super().__init__(stream, position, detail)
        self.version = version


class InvalidStreamName(VaultError, ValueError):
    """A stream name broke the naming rule."""


class MessageTooLarge(VaultError, ValueError):
    """A key, a value or a whole batch is over its limit."""


class InvalidPosition(VaultError, ValueError):
    """A read position is not a record boundary of the stream, or lies above its committed length."""


class PositionTrimmed(InvalidPosition):
    """A read position lies below the stream's start: the segments holding it were trimmed."""

    def __init__(self, stream: str, position: int, first: int) -> None:
        super().__init__(
            f"position {position} of stream {stream!r} was trimmed away: the stream starts at {first} "
            f"now; read from {first} (or from 0, which starts there)"
        )
        self.stream, self.position, self.first = stream, position, first


class BatchIdConflict(VaultError, ValueError):
    """A batch id was reused for a batch with different messages."""


class OwnershipLost(VaultError):
    """An exclusive consumer's claim on its stream ran out and another consumer of the group took
    the stream: this one must stop (the group goes on from its checkpoint)."""


def connection_reason(error: BaseException) -> str | None:
    """What the OS said in a failed connection's message ("[Errno 111] Connection refused" ->
    "Connection refused"), for errors that say where they tried and why it failed."""
    found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(error))
    return found[1] if found else None


def check_int(name: str, value: object) -> int:
    """`value`, if it is an int (a bool is not one, though Python says so); else TypeError naming
    the argument. Every public call that takes a count or a position checks it so."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return value
