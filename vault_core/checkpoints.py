"""Consumer checkpoints: per consumer group and stream, the next position to read.

On Azure they are entities of one table (`vaultcheckpoints`) in the store's account; on the local
store, small JSON files beside the streams. Every save is a compare-and-swap on the ETag of the
checkpoint the consumer last saw, so two consumers of one group cannot silently overwrite each
other: the later one gets CheckpointConflict.
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from .errors import CheckpointConflict, VaultError
from .format import check_stream_name

if TYPE_CHECKING:
    from azure.data.tables import TableClient

TABLE_NAME = "vaultcheckpoints"
CHECKPOINT_FOLDER = "_checkpoints"  # not a valid stream name, so never listed as a stream
OWNER_SUFFIX = ".owner"  # beside <stream>.json: which consumer of the group holds the stream
MAX_POSITION = 2**63 - 1  # a table stores it as Edm.Int64
_GROUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class Checkpoint(NamedTuple):
    group: str
    stream: str
    position: int  # the next position to read
    etag: str  # this version of the checkpoint; every save changes it
    updated: datetime  # when it was saved (UTC)


def check_group_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"consumer group name must be a string, got {type(name).__name__}")
    if not _GROUP_NAME.fullmatch(name):
        raise ValueError(
            f"invalid consumer group name {name!r}: use 1-128 letters, digits and ._- starting with "
            "a letter or digit"
        )
    return name


def _check_position(position: object) -> int:
    if isinstance(position, bool) or not isinstance(position, int):
        raise TypeError(f"checkpoint position must be an int, got {type(position).__name__}")
    if not 0 <= position <= MAX_POSITION:
        raise ValueError(f"checkpoint position must be 0 to 2**63 - 1, got {position}")
    return position


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

    @abc.abstractmethod
    def _get(self, stream: str) -> Checkpoint | None: ...

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
            if _GROUP_NAME.fullmatch(entry.name) and any(entry.glob("*.json"))
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
            checkpoint = Checkpoint(self.group, stream, position, uuid.uuid4().hex, _now())
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

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The group's lock (threads and processes take turns), its folder made first."""
        # Imported here, as the tables SDK is below: importing vault_core loads no backend.
        import fcntl

        from .stores.local import FILE_MODE, FOLDER_MODE, fsync_dir

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
        from .stores.local import FILE_MODE, fsync_dir

        partial = path.with_name(path.name + ".partial")
        with open(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE), "w") as file:
            json.dump(data, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
        fsync_dir(self.folder)


class TableCheckpoints(Checkpoints):
    """Checkpoints as entities of an Azure table (see `TABLE_NAME`): PartitionKey
    `<container>|<group>`, RowKey the stream, so each container's groups are its own; claims on
    streams in the partition `<container>|<group>|owners`. Saves are conditional on the entity's
    ETag. The table is created by the first save that finds none."""

    @staticmethod
    def groups(table: TableClient, container: str) -> list[str]:
        """The consumer groups with checkpoints on the streams of `container`."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entities = table.query_entities(
                "PartitionKey ge @low and PartitionKey lt @high",
                parameters={"low": f"{container}|", "high": f"{container}}}"},  # "}" follows "|"
                select=["PartitionKey"],
            )
            partitions = {entity["PartitionKey"] for entity in entities}
        except ResourceNotFoundError:  # no table yet
            return []
        return sorted({p.split("|")[1] for p in partitions if p.count("|") == 1})

    def __init__(self, table: TableClient, container: str, group: str) -> None:
        super().__init__(group)
        self._table = table
        self.container = container
        self._partition = f"{container}|{self.group}"
        self._owners = f"{self._partition}|owners"  # the group's claims on streams

    def __repr__(self) -> str:
        return f"TableCheckpoints({self._table.url!r}, {self._partition!r})"

    def _get(self, stream: str) -> Checkpoint | None:
        found = self._read(stream)
        return found and found[0]

    def _read(self, stream: str) -> tuple[Checkpoint, str] | None:
        """The checkpoint and the id of the save that wrote it."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self._table.get_entity(self._partition, stream)
        except ResourceNotFoundError:  # no such entity, or no table yet
            return None
        return self._checkpoint(entity), entity.get("save_id", "")

    def _checkpoint(self, entity: Any) -> Checkpoint:
        position = entity["position"]
        updated = entity["updated"]
        return Checkpoint(
            self.group,
            entity["RowKey"],
            int(getattr(position, "value", position)),  # an Int64 comes back as an EntityProperty
            entity.metadata["etag"],
            datetime(*updated.timetuple()[:6], updated.microsecond, tzinfo=UTC),  # a plain datetime
        )

    def _save(self, stream: str, position: int, expected: Checkpoint | None) -> Checkpoint:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import EdmType, EntityProperty, UpdateMode

        updated = _now()
        # Tells our own earlier attempt from another consumer's save when a retried request finds
        # the entity already changed.
        save_id = uuid.uuid4().hex
        entity = {
            "PartitionKey": self._partition,
            "RowKey": stream,
            "position": EntityProperty(position, EdmType.INT64),  # an int would be sent as Int32
            "updated": updated,
            "save_id": save_id,
        }
        try:
            if expected is None:
                result = self._create(entity)
            else:
                result = self._table.update_entity(
                    entity,
                    mode=UpdateMode.REPLACE,
                    etag=expected.etag,
                    match_condition=MatchConditions.IfNotModified,
                )
        except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError) as error:
            found = self._read(stream)
            if found is not None and found[1] == save_id:
                return found[0]  # a retry of a save whose first attempt landed
            raise CheckpointConflict(self.group, stream, found and found[0], expected) from error
        return Checkpoint(self.group, stream, position, result["etag"], updated)

    def _create(self, entity: dict[str, Any]) -> dict[str, Any]:
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

        try:
            return self._table.create_entity(entity)
        except ResourceNotFoundError:  # no table yet
            with contextlib.suppress(ResourceExistsError):
                self._table.create_table()
            return self._table.create_entity(entity)

    def _all(self) -> list[Checkpoint]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entities = list(
                self._table.query_entities("PartitionKey eq @pk", parameters={"pk": self._partition})
            )
        except ResourceNotFoundError:  # no table yet
            return []
        return [self._checkpoint(entity) for entity in entities]

    def _claim(self, stream: str, owner: str, expires: float) -> bool:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        entity = {"PartitionKey": self._owners, "RowKey": stream, "owner": owner, "expires": expires}
        try:
            held = self._table.get_entity(self._owners, stream)
        except ResourceNotFoundError:  # unclaimed (or no table yet)
            try:
                self._create(entity)
                return True
            except ResourceExistsError:  # another claim came first
                return False
        if held["owner"] != owner and held["expires"] > time.time():
            return False
        try:  # only over the claim just read: of two takers, one wins
            self._table.update_entity(
                entity,
                mode=UpdateMode.REPLACE,
                etag=held.metadata["etag"],
                match_condition=MatchConditions.IfNotModified,
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            return False
        return True

    def _release(self, stream: str, owner: str) -> None:
        from azure.core import MatchConditions
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        try:
            held = self._table.get_entity(self._owners, stream)
            if held["owner"] == owner:
                self._table.delete_entity(
                    self._owners,
                    stream,
                    etag=held.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
        except (ResourceNotFoundError, HttpResponseError):  # gone, or taken over meanwhile
            return

    def close(self) -> None:
        self._table.close()


def _now() -> datetime:
    # Whole milliseconds, which every table service keeps exactly: a saved checkpoint equals the
    # one read back.
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)
