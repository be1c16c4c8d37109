"""Message Vault: publish-subscribe with replay and batching on Azure Storage.

store = vault_core.open_store("./data")          # or a connection string, or an account URL
with store.writer("orders") as writer:
    writer.append([vault_core.Message("order-created", b"{...}")], batch_id="order-42")
for message in store.reader("orders").replay():
    ...
"""

from __future__ import annotations

from typing import Any

from .checkpoints import Checkpoint, CheckpointConflict, Checkpoints
from .consumer import Consumer, GroupLag, group_lags
from .errors import (
    BatchIdConflict,
    CorruptDataError,
    FencedError,
    InvalidPosition,
    InvalidStreamName,
    MessageTooLarge,
    OwnershipLost,
    PositionTrimmed,
    ReadUrlExpired,
    StoreAccessDenied,
    StoreError,
    StoreFull,
    StoreNotFound,
    StreamBusyError,
    UnknownFormatVersion,
    VaultError,
)
from .format import Message, StoredMessage
from .mirroring import MirrorResult, mirror
from .publish import BadInput, PublishIncomplete, PublishProgress, PublishRefused, PublishResult, publish
from .reader import ReadResult, StreamReader, StreamStatus
from .retention import Retention
from .sources import open_source
from .store import Store, open_store
from .verification import VerifyReport
from .writer import AppendResult, Batch, StreamWriter

__all__ = [
    "AppendResult",
    "BadInput",
    "Batch",
    "BatchIdConflict",
    "Checkpoint",
    "CheckpointConflict",
    "Checkpoints",
    "Consumer",
    "CorruptDataError",
    "FencedError",
    "GroupLag",
    "InvalidPosition",
    "InvalidStreamName",
    "Message",
    "MessageTooLarge",
    "MirrorResult",
    "OwnershipLost",
    "PositionTrimmed",
    "PublishIncomplete",
    "PublishProgress",
    "PublishRefused",
    "PublishResult",
    "ReadResult",
    "ReadUrlExpired",
    "Retention",
    "Store",
    "StoreAccessDenied",
    "StoreError",
    "StoreFull",
    "StoreNotFound",
    "StoredMessage",
    "StreamBusyError",
    "StreamReader",
    "StreamStatus",
    "StreamWriter",
    "UnknownFormatVersion",
    "VaultError",
    "VerifyReport",
    "group_lags",
    "mirror",
    "open_reader",
    "open_store",
    "publish",
]


def open_reader(url: str, *, credential: Any = None, key: str | None = None) -> StreamReader:
    """A reader for one stream, given either
    - a read URL from `Store.read_url` (a SAS URL or a file:// URL; a plain blob URL works with an
      Azure `credential`), which reads as long as the URL lasts: once storage refuses it,
      `ReadUrlExpired`; or
    - the stream's address on the HTTP API, http(s)://HOST[:PORT]/api/streams/NAME (`key`: the API
      key, if the vault has one), which asks the API for the read URL and renews it before it
      expires, so that replay, follow and consumers read for as long as the process runs.
      `vault_core.client.NotFound` if the API knows no such stream, `Unauthorized` for the key."""
    stream, source = open_source(url, credential=credential, key=key)
    return StreamReader(stream, source)
