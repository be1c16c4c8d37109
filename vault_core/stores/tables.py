"""Consumer checkpoints on Azure: entities of one table (`vaultcheckpoints`) in the store's
account, and how a blob store reaches that account's Table service. Imported only when a blob
store's checkpoints are used, so that opening a stream loads no tables SDK."""

from __future__ import annotations

import contextlib
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

from azure.core import MatchConditions
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import EdmType, EntityProperty, TableClient, UpdateMode

from ..checkpoints import Checkpoint, CheckpointConflict, Checkpoints, checkpoint_time
from .endpoints import is_path_style
from .retries import table_client_options

TABLE_NAME = "vaultcheckpoints"


def table_url(blob_url: str) -> str:
    """The account's Table service URL from its Blob service URL: `<account>.blob.<suffix>` ->
    `<account>.table.<suffix>`. The emulator's path-style `http://127.0.0.1:<port>/<account>`
    does not tell where its Table service listens: this takes port + 2, Azurite's default layout
    (blobs on 10000, tables on 10002); use a connection string with a TableEndpoint otherwise."""
    parsed = urlparse(blob_url)
    host = parsed.hostname or ""
    if is_path_style(host):
        if parsed.port is None:
            raise ValueError(
                f"cannot tell the Table service URL of {blob_url!r} (no port): open the store with "
                "a connection string that has a TableEndpoint"
            )
        netloc = parsed.netloc.rsplit(":", 1)[0] + f":{parsed.port + 2}"
    elif ".blob." in host:
        netloc = parsed.netloc.replace(".blob.", ".table.", 1)
    else:
        raise ValueError(
            f"cannot tell the Table service URL of {blob_url!r} (not <account>.blob.<suffix>): open "
            "the store with a connection string that has a TableEndpoint"
        )
    return parsed._replace(netloc=netloc).geturl().rstrip("/")


def client_for(blob_url: str, credential: Any) -> TableClient:
    from azure.data.tables import TableClient

    account_key = getattr(credential, "account_key", None)
    if account_key:  # the blob SDK's shared key credential, which the tables SDK does not take
        credential = AzureNamedKeyCredential(credential.account_name, account_key)
    return TableClient(table_url(blob_url), TABLE_NAME, credential=credential, **table_client_options())


def client_from(connection_string: str) -> TableClient:
    settings = {
        key.strip().lower(): value
        for key, _, value in (part.partition("=") for part in connection_string.split(";"))
        if key.strip()
    }
    if settings.get("usedevelopmentstorage", "").strip().lower() == "true":
        connection_string = "UseDevelopmentStorage=true"  # the only form the tables SDK knows
    elif "blobendpoint" in settings and "tableendpoint" not in settings:
        raise ValueError(
            "the store's connection string has a BlobEndpoint but no TableEndpoint: add "
            "TableEndpoint=<the account's Table service URL>, where consumer checkpoints are kept"
        )
    return TableClient.from_connection_string(
        connection_string, table_name=TABLE_NAME, **table_client_options()
    )


class TableCheckpoints(Checkpoints):
    """Checkpoints as entities of an Azure table (see `TABLE_NAME`): PartitionKey
    `<container>|<group>`, RowKey the stream, so each container's groups are its own; claims on
    streams in the partition `<container>|<group>|owners`. Saves are conditional on the entity's
    ETag. The table is created by the first save that finds none."""

    @staticmethod
    def groups(table: TableClient, container: str) -> list[str]:
        """The consumer groups with checkpoints on the streams of `container`."""

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
            _plain_utc(updated),
        )

    def _save(self, stream: str, position: int, expected: Checkpoint | None) -> Checkpoint:
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

        updated = checkpoint_time()
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

        try:
            return self._table.create_entity(entity)
        except ResourceNotFoundError:  # no table yet
            with contextlib.suppress(ResourceExistsError):
                self._table.create_table()
            return self._table.create_entity(entity)

    def _all(self) -> list[Checkpoint]:

        try:
            entities = list(
                self._table.query_entities("PartitionKey eq @pk", parameters={"pk": self._partition})
            )
        except ResourceNotFoundError:  # no table yet
            return []
        return [self._checkpoint(entity) for entity in entities]

    def _claim(self, stream: str, owner: str, expires: float) -> bool:
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

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
        from azure.core.exceptions import ResourceNotFoundError

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

    def _forget(self, stream: str) -> None:
        for partition in (self._partition, self._owners):
            self._table.delete_entity(partition, stream)  # a missing entity is no error

    def close(self) -> None:
        self._table.close()


def _plain_utc(when: datetime) -> datetime:
    """A plain aware datetime from the tables SDK's own datetime subclass, so that a checkpoint
    read back equals the one saved."""
    return datetime(
        when.year, when.month, when.day, when.hour, when.minute, when.second, when.microsecond, tzinfo=UTC
    )
