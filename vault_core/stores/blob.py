"""Azure Storage: a stream's segments in a container of its own, `<store container>-<stream>`,
each a page blob `<stream>/log`, then `<stream>/log.<base>` (`segment_name`) while it can be
written, and a block blob `<stream>/sealed.<base>` once sealed, which lifecycle rules can move to
the Cool and Cold tiers. A container per stream is what lets one read-only credential (a container
SAS) reach all of a stream's segments and nothing of any other stream. Streams made before
segments live in the store's container itself, as one page blob `<stream>/log`: they are read and
written there as they always were, and never roll (a blob SAS reaches only that blob).

Every data and commit write carries the writer's blob lease, the fence: a writer that took over
broke it, so from then on storage refuses every write of the writer before. A commit carries no
condition on the blob's ETag, so that the next group's data can be written while it is in flight
(the writer pipelines commits), and a commit whose answer was lost is simply sent again: the same
pages, the same bytes. Readers need only read access to the stream's blobs (a SAS, or Entra ID).
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import parse_qs, urlparse, urlsplit

from azure.core import MatchConditions
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
)
from azure.storage.blob import (
    BlobBlock,
    BlobClient,
    BlobLeaseClient,
    BlobSasPermissions,
    BlobServiceClient,
    BlobType,
    ContainerClient,
    ContainerSasPermissions,
    generate_blob_sas,
    generate_container_sas,
)

from .. import metrics
from ..checkpoints import check_group_name
from ..errors import (
    FencedError,
    ReadUrlExpired,
    StoreNotFound,
    StreamBusyError,
    VaultError,
    connection_reason,
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
from .endpoints import is_path_style
from .retries import blob_client_options

if TYPE_CHECKING:
    from azure.data.tables import TableClient

    from ..checkpoints import Checkpoints

LOG_BLOB = FIRST_SEGMENT
SEALED = "sealed"  # the prefix of a sealed segment's block blob
MAX_BLOCK_FROM_URL = 100 * 1024 * 1024  # what one Put Block From URL copies, at most
PARALLEL_BLOCK_COPIES = 8  # Put Block From URL requests one seal has in flight
SEAL_SAS_LIFE = timedelta(minutes=30)  # the source URL's, for copying one segment
MAX_PUT_PAGE = 4 * 1024 * 1024  # Azure's limit for one Put Page
GROWTH_STEP = 4 * 1024 * 1024
MAX_GROWTH = 1024 * 1024 * 1024
PARALLEL_PUTS = 4
TAKEOVER_ATTEMPTS = 3
CLOCK_SKEW = timedelta(minutes=5)
_CONTAINER_NAME = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
# A stream's own container says whose it is: the store's container and the stream's name.
STORE_KEY, STREAM_KEY = "vaultstore", "vaultstream"
REMOVED_KEY = "vaultremoved"  # set when the stream was deleted: its container waits, unlisted
# The blob index tag on sealed segments, which the Bicep's lifecycle rules tier by.
SEALED_TAG = {"vault": "sealed-segment"}


class BlobStore(Backend):
    def __init__(self, service: BlobServiceClient, container: str) -> None:
        if not (3 <= len(container) <= 63 and _CONTAINER_NAME.fullmatch(container)):
            raise ValueError(
                f"invalid container name {container!r}: use 3-63 lowercase letters, digits and "
                "single hyphens, starting and ending with a letter or digit"
            )
        self._service = service
        self._container: ContainerClient = service.get_container_client(container)
        self.container = container
        self._homes: dict[str, ContainerClient] = {}  # stream -> the container holding it, once known

        # How checkpoints() reaches the account's Table service: by default the blob service's
        # URL and credential; a store made from a connection string uses that instead.
        def by_url() -> TableClient:
            from .tables import client_for  # the Table service's SDK, imported when first needed

            return client_for(service.url, service.credential)

        self._table_client: Callable[[], TableClient] = by_url

    def __repr__(self) -> str:
        return f"BlobStore({str(self)!r})"

    def __str__(self) -> str:
        """The container's URL, without any SAS token: safe to print."""
        return urlsplit(self._container.url)._replace(query="").geturl()

    @classmethod
    def from_connection_string(cls, connection_string: str, *, container: str) -> BlobStore:
        service = BlobServiceClient.from_connection_string(connection_string, **blob_client_options())
        store = cls(service, container)

        def by_connection_string() -> TableClient:
            from .tables import client_from

            return client_from(connection_string)

        store._table_client = by_connection_string
        return store

    @classmethod
    def from_url(cls, url: str, *, credential: Any, container: str) -> BlobStore:
        """An account URL, optionally followed by /<container> (the path-style
        http://127.0.0.1:10000/<account>/<container> of the emulator works too)."""
        parsed = urlparse(url)
        segments = [s for s in parsed.path.split("/") if s]
        account_segments = 1 if is_path_style(parsed.hostname or "") else 0
        if len(segments) > account_segments:
            container = segments[account_segments]
        account_url = f"{parsed.scheme}://{parsed.netloc}" + "".join(
            f"/{s}" for s in segments[:account_segments]
        )
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        service = BlobServiceClient(account_url, credential=credential, **blob_client_options())
        return cls(service, container)

    def streams(self) -> list[str]:
        """The streams in containers of their own (one listing of containers per 5,000), and
        those made before segments, in the store's container."""
        names = set()
        for container in self._service.list_containers(
            name_starts_with=f"{self.container}-", include_metadata=True
        ):
            metadata = container.metadata or {}
            if (
                metadata.get(STORE_KEY) == self.container
                and container.name == self._own_name(metadata.get(STREAM_KEY, ""))
                and REMOVED_KEY not in metadata
            ):
                names.add(metadata[STREAM_KEY])
        try:
            for blob in self._container.list_blobs():
                stream, _, leaf = blob.name.rpartition("/")
                if _listed_segment(leaf) is not None:
                    try:
                        names.add(check_stream_name(stream))
                    except ValueError:
                        continue
        except ResourceNotFoundError:
            pass
        return sorted(names)

    def _own_name(self, stream: str) -> str:
        return f"{self.container}-{stream}"

    def _home(self, stream: str) -> ContainerClient:
        """The container that holds the stream: the store's own if the stream was made there
        before segments, else the stream's container (which need not exist yet)."""
        home = self._homes.get(stream)
        if home is None:
            home = self._container if list_segments(self._container, stream) else self._own(stream)
            self._homes[stream] = home
        return home

    def _own(self, stream: str) -> ContainerClient:
        return self._service.get_container_client(self._own_name(stream))

    def segments(self, stream: str) -> list[Segment]:
        return list_segments(self._home(stream), stream)

    def _blob(self, stream: str, base: int = 0) -> BlobClient:
        return self._home(stream).get_blob_client(f"{stream}/{segment_name(base)}")

    def _sealed_blob(self, stream: str, base: int) -> BlobClient:
        return self._home(stream).get_blob_client(f"{stream}/{segment_name(base, SEALED)}")

    def _make_home(self, stream: str) -> None:
        """Make the stream's own container (and the store's, which marks the store as existing),
        labelled as this store's stream; refuse one that another store's stream holds."""
        home = self._home(stream)
        if home is self._container:
            with contextlib.suppress(ResourceExistsError):
                self._container.create_container()
            return
        name = home.container_name
        if len(name) > 63:
            raise ValueError(
                f"stream {stream!r} needs a container of its own, {name!r}, and that is longer than "
                f"Azure's 63 characters: use a stream name of at most {62 - len(self.container)} "
                "characters, or a store container of at most 12"
            )
        with contextlib.suppress(ResourceExistsError):
            self._container.create_container()
        labels = {STORE_KEY: self.container, STREAM_KEY: stream}
        try:
            home.create_container(metadata=labels)
            return
        except ResourceExistsError:
            pass
        held = home.get_container_properties().metadata or {}
        if held.get(STORE_KEY) != self.container or held.get(STREAM_KEY) != stream:
            # Another store's stream, or a container that is no stream's (vault-staging, say).
            raise VaultError(
                f"container {name!r}, where stream {stream!r} of store {self.container!r} would live, "
                f"exists and is not that stream's: use another stream name"
            )
        if held != labels:
            home.set_container_metadata(labels)  # a stream removed before, made again

    def exists(self) -> bool:
        """Also the quick check that the account can be reached: one connection attempt, not the
        retries of a transient fault, and an error that says where it tried."""
        try:
            self._container.get_container_properties(retry_connect=0)
        except ResourceNotFoundError:
            return False
        except ServiceRequestError as error:
            host = urlsplit(self._container.url).netloc
            emulator = is_path_style(urlsplit(self._container.url).hostname or "")
            raise StoreNotFound(
                f"cannot reach the storage account at {host} ({connection_reason(error) or 'no answer'}): "
                + (
                    f"is Azurite running at {host}? (scripts/azurite.sh starts it)"
                    if emulator
                    else "check the account name, the endpoint and the network"
                )
            ) from None
        return True

    def open_log(
        self, stream: str, *, lease_seconds: int, takeover: bool = False, base: int = 0, create: bool = True
    ) -> LogWriter:
        blob = self._blob(stream, base)
        for _ in range(3):
            created = False
            if create:
                try:
                    created = _create_page_blob(blob)
                except ResourceNotFoundError:  # the container is new too
                    self._make_home(stream)
                    created = _create_page_blob(blob)
                if created and base == 0:
                    self._make_home(stream)  # a stream made again: labelled as a stream once more
            try:
                return BlobLog(blob, stream, lease_seconds, takeover=takeover, created=created)
            except ResourceNotFoundError:  # its last writer discarded it meanwhile: make it again
                if not create:
                    raise FileNotFoundError(f"stream {stream!r} has no segment log at {base}") from None
                continue
        raise StreamBusyError(f"stream {stream!r} keeps being created and removed by another writer")

    def open_segment(self, stream: str, segment: Segment) -> LogSource:
        if segment.sealed:
            return BlobSource(self._sealed_blob(stream, segment.base))
        return BlobSource(self._blob(stream, segment.base))

    def seal(self, stream: str, log: LogWriter, base: int, length: int) -> None:
        """Copy the segment's first `length` bytes into a block blob, server-side (Put Block From
        URL: no byte passes through this process), check the copy, then remove the page blob."""
        assert isinstance(log, BlobLog)
        sealed = self._sealed_blob(stream, base)

        def stage(block: tuple[int, int]) -> BlobBlock:
            index, start = block
            # Signed per block: a segment of a TiB takes longer to copy than one SAS should last.
            source = f"{log.url}?{self._sas(SEAL_SAS_LIFE, log.container, log.blob_name)}"
            block_id = f"{index:08d}"
            size = min(MAX_BLOCK_FROM_URL, length - start)
            sealed.stage_block_from_url(block_id, source, source_offset=start, source_length=size)
            log.hold()  # the page blob stays ours until the copy replaces it
            return BlobBlock(block_id)

        ranges = list(enumerate(range(0, length, MAX_BLOCK_FROM_URL)))
        if len(ranges) == 1:
            blocks = [stage(ranges[0])]
        else:
            with ThreadPoolExecutor(PARALLEL_BLOCK_COPIES, thread_name_prefix="vault-seal") as copies:
                blocks = list(copies.map(stage, ranges))
        sealed.commit_block_list(blocks, tags=SEALED_TAG)
        log.check_copy(sealed, length)
        log.hold()
        log.remove()

    def delete_segment(self, stream: str, segment: Segment) -> None:
        """Both forms of the segment: its sealed block blob, and a page blob left by a roll that
        stopped before sealing (whose lease, held by a writer that died, is broken first)."""
        with contextlib.suppress(ResourceNotFoundError):
            self._sealed_blob(stream, segment.base).delete_blob()
        blob = self._blob(stream, segment.base)
        with contextlib.suppress(ResourceNotFoundError):
            with contextlib.suppress(HttpResponseError):
                BlobLeaseClient(blob).break_lease(lease_break_period=0)
            blob.delete_blob()

    def can_roll(self, stream: str) -> bool:
        """Not a stream made before segments: its readers hold a SAS for its one blob only."""
        return self._home(stream) is not self._container

    def stream_removed(self, stream: str) -> None:
        """Its container stays (a name Azure frees only a while after a delete), marked removed:
        no longer listed, and ready to be the stream again."""
        home = self._homes.pop(stream, None)
        if home is not None and home is not self._container:
            with contextlib.suppress(ResourceNotFoundError):
                home.set_container_metadata(
                    {STORE_KEY: self.container, STREAM_KEY: stream, REMOVED_KEY: "true"}
                )

    def read_url(self, stream: str, *, expires_in: timedelta = timedelta(hours=1)) -> str:
        """A read-only SAS URL for the stream: the URL of its first segment, signed for reading
        and listing the stream's own container (every segment, nothing of another stream); for
        a stream made before segments, for reading its one blob. Signed with the account key when
        the store has one, else a user delegation SAS (the identity needs the Storage Blob
        Delegator role)."""
        check_stream_name(stream)
        blob = self._blob(stream)
        if self._home(stream) is self._container:
            return f"{blob.url}?{self._sas(expires_in, blob.container_name, blob.blob_name)}"
        return f"{blob.url}?{self._sas(expires_in, blob.container_name)}"

    def _sas(self, expires_in: timedelta, container: str, blob_name: str | None = None) -> str:
        """A read-only SAS token: for reading one blob of `container`, or (no `blob_name`) for
        reading and listing the whole container. Signed with the account key when the store has
        one, else a user delegation SAS (the identity needs the Storage Blob Delegator role)."""
        now = datetime.now(UTC)
        start, expiry = now - CLOCK_SKEW, now + expires_in
        signing: dict[str, Any]
        account_key = getattr(self._service.credential, "account_key", None)
        if account_key:
            signing = {"account_key": account_key}
        else:
            signing = {"user_delegation_key": self._service.get_user_delegation_key(start, expiry)}
        account = str(self._service.account_name)  # blob.account_name has the container on path-style URLs
        if blob_name is None:
            permission = ContainerSasPermissions(read=True, list=True)
            return generate_container_sas(
                account, container, permission=permission, start=start, expiry=expiry, **signing
            )
        return generate_blob_sas(
            account,
            container,
            blob_name,
            permission=BlobSasPermissions(read=True),
            start=start,
            expiry=expiry,
            **signing,
        )

    def write_file(self, name: str, data: bytes) -> None:
        blob = self._container.get_blob_client(name)
        try:
            blob.upload_blob(data, overwrite=True)
        except ResourceNotFoundError:  # the container is new
            with contextlib.suppress(ResourceExistsError):
                self._container.create_container()
            blob.upload_blob(data, overwrite=True)

    def read_file(self, name: str) -> bytes:
        try:
            return self._container.get_blob_client(name).download_blob().readall()
        except ResourceNotFoundError:
            raise FileNotFoundError(f"no object {name!r} in container {self.container!r}") from None

    def delete_file(self, name: str) -> None:
        with contextlib.suppress(ResourceNotFoundError):
            self._container.get_blob_client(name).delete_blob()

    def consumer_groups(self) -> list[str]:
        from .tables import TableCheckpoints

        with self._table_client() as table:
            return TableCheckpoints.groups(table, self.container)

    def checkpoints(self, group: str) -> Checkpoints:
        """Entities of the table `vaultcheckpoints` in this store's account, keyed by container and
        group (see `tables.table_url` for where that table is when the store was opened by URL)."""
        from .tables import TableCheckpoints

        check_group_name(group)  # before making a client
        return TableCheckpoints(self._table_client(), self.container, group)

    def close(self) -> None:
        self._service.close()


def _listed_segment(leaf: str) -> Segment | None:
    """The segment a blob's name (after `<stream>/`) is, or None."""
    base = segment_base(leaf)
    if base is not None:
        return Segment(base)
    base = segment_base(leaf, SEALED)
    return None if base is None else Segment(base, sealed=True)


def list_segments(container: ContainerClient, stream: str) -> list[Segment]:
    """A stream's segments from one listing of its blobs; a segment both sealed and still a
    page blob (a seal cut short before the page blob was removed) is listed as the page blob."""
    found: dict[int, Segment] = {}
    try:
        # Names only: a listing with properties costs the SDK three times as long to parse.
        for name in container.list_blob_names(name_starts_with=f"{stream}/"):
            segment = _listed_segment(name[len(stream) + 1 :])
            if segment is not None and (segment.base not in found or not segment.sealed):
                found[segment.base] = segment
    except ResourceNotFoundError:
        return []
    return [found[base] for base in sorted(found)]


def _create_page_blob(blob: BlobClient) -> bool:
    """Creates the stream's blob unless it exists (then the lease decides who writes); True if it
    created it."""
    try:
        blob.create_page_blob(GROWTH_STEP, match_condition=MatchConditions.IfMissing)
    except (ResourceExistsError, ResourceModifiedError):
        return False
    return True


class BlobSource:
    def __init__(self, blob: BlobClient) -> None:
        self._blob = blob

    def read(self, start: int, length: int) -> bytes:
        try:
            return self._blob.download_blob(offset=start, length=length, max_concurrency=1).readall()
        except ResourceNotFoundError:
            return b""
        except HttpResponseError as error:
            if error.status_code == 416:  # the range starts past the end of the blob
                return b""
            raise

    def size(self) -> int:
        try:
            return self._blob.get_blob_properties().size
        except ResourceNotFoundError:
            return 0

    def close(self) -> None:
        self._blob.close()


class ReadUrlSource(BlobSource):
    """A stream's blob read through its SAS read URL, which storage refuses (403) once it expired:
    that is a ReadUrlExpired saying how to get a fresh one, not the SDK's "failed to
    authenticate"."""

    def __init__(self, blob: BlobClient, stream: str, expiry: datetime | None) -> None:
        super().__init__(blob)
        self._stream = stream
        self._expiry = expiry

    def read(self, start: int, length: int) -> bytes:
        try:
            return super().read(start, length)
        except HttpResponseError as error:
            self._raise_if_refused(error)
            raise

    def size(self) -> int:
        try:
            return super().size()
        except HttpResponseError as error:
            self._raise_if_refused(error)
            raise

    def _raise_if_refused(self, error: HttpResponseError) -> None:
        if error.status_code != 403 or (self._expiry is None and "sig=" not in self._blob.url):
            return
        where = urlsplit(self._blob.url)._replace(query="").geturl()  # never the SAS
        if self._expiry is not None and datetime.now(UTC) >= self._expiry:
            what = f"expired at {self._expiry:%Y-%m-%dT%H:%M:%SZ} (storage refused it: 403)"
        else:
            what = "was refused by storage (403): it may have expired"
        raise ReadUrlExpired(
            f"the read URL of stream {self._stream!r} ({where}) {what}. GET /api/streams/{self._stream} "
            "gives a fresh one; vault_core.open_reader given the stream's API URL (http(s)://HOST/api/"
            f"streams/{self._stream}) renews it as it expires"
        ) from None


class BlobLog:
    """A stream's page blob, leased for writing."""

    def __init__(
        self,
        blob: BlobClient,
        stream: str,
        lease_seconds: int,
        *,
        takeover: bool = False,
        created: bool = False,
    ) -> None:
        self.created = created
        self._blob = blob
        self._source = BlobSource(blob)
        self._stream = stream
        self._lease_seconds = lease_seconds
        self._lease = _acquire(blob, stream, lease_seconds, takeover=takeover)
        self._renewed = time.monotonic()
        self._lease_lock = threading.Lock()  # a seal's block copies renew it from several threads
        self._pool: ThreadPoolExecutor | None = None
        self._etag = ""
        self._size = 0
        self.refresh()

    def refresh(self) -> None:
        properties = self._blob.get_blob_properties()
        self._etag = properties.etag
        self._size = properties.size

    @property
    def url(self) -> str:
        return self._blob.url

    @property
    def blob_name(self) -> str:
        return self._blob.blob_name

    @property
    def container(self) -> str:
        return self._blob.container_name

    def check_copy(self, copy: BlobClient, length: int) -> None:
        """That `copy` is this log's first `length` bytes: its size, its commit slots and its last
        page, read back (a few KiB: each block was copied and checked by storage itself)."""
        properties = copy.get_blob_properties()
        if properties.blob_type != BlobType.BLOCKBLOB or properties.size != length:
            raise VaultError(f"the sealed copy {copy.blob_name} has {properties.size} bytes, not {length}")
        for start, size in ((0, 2 * 16896), (max(0, length - 4096), min(4096, length))):
            if BlobSource(copy).read(start, size) != self.read(start, size):
                raise VaultError(f"the sealed copy {copy.blob_name} differs from its segment at byte {start}")

    def remove(self) -> None:
        """Delete the log, under our lease, and give the lease up."""
        with contextlib.suppress(ResourceNotFoundError):
            self._blob.delete_blob(lease=self._lease)
        self.close()

    def read(self, start: int, length: int) -> bytes:
        return self._source.read(start, length)

    def size(self) -> int:
        return self._size

    def write(self, start: int, parts: Sequence[Buffer]) -> None:
        self._keep_lease()
        data = parts[0] if len(parts) == 1 else b"".join(parts)  # Put Page takes one buffer
        end = start + len(data)
        if end > self._size:
            self._grow(end)
        view = memoryview(data)
        pieces = [
            (at, view[at - start : at - start + MAX_PUT_PAGE]) for at in range(start, end, MAX_PUT_PAGE)
        ]
        *first, last = pieces
        if first:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(PARALLEL_PUTS, thread_name_prefix="vault-put-page")
            for future in [self._pool.submit(self._put, at, piece) for at, piece in first]:
                future.result()
        # The last piece goes alone, after the others: its ETag is the log's latest.
        self._etag = self._put(*last)

    def write_commit_slot(self, start: int, record: bytes) -> None:
        """May be sent while the next group's data is being written (see the module's doc)."""
        self._keep_lease()
        self._etag = self._put(start, memoryview(record))

    def _put(self, at: int, piece: memoryview) -> str:
        try:
            # The SDK sends any buffer, though its annotation says bytes: no copy of the piece.
            result = self._blob.upload_page(piece, offset=at, length=len(piece), lease=self._lease)  # type: ignore[arg-type]
        except HttpResponseError as error:
            self._raise_fenced(error)
        return str(result["etag"])

    def _grow(self, end: int) -> None:
        size = max(end, min(self._size * 2, self._size + MAX_GROWTH))
        size += -size % GROWTH_STEP
        try:
            result = self._blob.resize_blob(size, lease=self._lease)
        except HttpResponseError as error:
            self._raise_fenced(error)
        self._size = size
        self._etag = str(result["etag"])

    def hold(self) -> None:
        """Keep the lease through work that writes nothing for a while (a seal's copy)."""
        self._keep_lease()

    def _keep_lease(self) -> None:
        """Renew the lease once half of it has passed. A lease that expired while this writer was
        idle is taken back only if nobody else took it and the log did not change (a writer
        that idle has no write in flight, so its last ETag is the log's if nobody wrote since)."""
        if time.monotonic() - self._renewed < self._lease_seconds / 2:
            return
        with self._lease_lock:  # a seal's copies and a commit in flight may both get here
            elapsed = time.monotonic() - self._renewed
            if elapsed < self._lease_seconds / 2:
                return
            before = self._etag
            self._renew()
            if elapsed >= self._lease_seconds - 1:
                self.refresh()
                if self._etag != before:
                    raise FencedError(
                        f"stream {self._stream!r} changed while this writer's lease had expired"
                    )

    def _renew(self) -> bool:
        started = time.monotonic()
        try:
            self._lease.renew()
        except HttpResponseError as error:
            self._raise_fenced(error)
        self._renewed = started
        return True

    def _raise_fenced(self, error: HttpResponseError) -> NoReturn:
        if error.status_code in (409, 412):
            reason = getattr(error, "error_code", None) or error.status_code  # set only when the service says
            raise FencedError(
                f"the writer of stream {self._stream!r} lost ownership ({reason}): another writer took "
                "over or the stream changed; stop and open a new writer"
            ) from error
        raise error

    def discard(self) -> None:
        with contextlib.suppress(HttpResponseError):  # fenced: the stream is someone else's now
            self._blob.delete_blob(lease=self._lease)
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
        with contextlib.suppress(HttpResponseError):  # a lost lease has nothing to give up
            self._lease.release()
        self._blob.close()


def _acquire(blob: BlobClient, stream: str, lease_seconds: int, *, takeover: bool) -> BlobLeaseClient:
    """A new lease on the stream's blob. Taking over breaks the holder's lease with no break
    period, then acquires a lease of our own: from the break on, every request carrying the old
    lease is refused, so the old writer can neither write nor commit (a write of its that storage
    accepted before the break lies past the committed position, where ours overwrite it)."""
    lease = BlobLeaseClient(blob)
    for attempt in range(TAKEOVER_ATTEMPTS):
        try:
            lease.acquire(lease_seconds)
            if attempt:  # acquired after breaking another writer's lease
                metrics.writer_takeovers.add(1, {"stream": stream})
            return lease
        except HttpResponseError as error:
            if error.status_code != 409:
                raise
        if not takeover:
            raise StreamBusyError(
                f"stream {stream!r} has another live writer (its blob lease is held; "
                f"it frees within {lease_seconds} s of that writer stopping)"
            )
        if attempt + 1 < TAKEOVER_ATTEMPTS:
            # Another taker may acquire between our break and our acquire: then we break again.
            with contextlib.suppress(HttpResponseError):  # 409: the lease was released meanwhile
                BlobLeaseClient(blob).break_lease(lease_break_period=0)
    raise StreamBusyError(
        f"stream {stream!r} could not be taken over: another writer took it back "
        f"{TAKEOVER_ATTEMPTS} times in a row; stop the competing writer"
    )


def source_from_url(url: str, *, credential: Any = None) -> tuple[str, StreamLog]:
    """The stream name and log of a blob read URL (a SAS URL, or a plain URL with a credential)."""
    if credential is None and "sig" not in parse_qs(urlparse(url).query):
        # Anonymous reads of a private blob answer "not found", which would read as an empty stream.
        raise ValueError(
            f"{url!r} carries no SAS token: pass credential= (e.g. DefaultAzureCredential()) to read it"
        )
    blob = BlobClient.from_blob_url(url, credential=credential, **blob_client_options())
    stream, _, leaf = blob.blob_name.rpartition("/")
    if leaf != LOG_BLOB:
        raise ValueError(f"not a stream read URL: {url!r} (expected .../<stream>/{LOG_BLOB})")
    check_stream_name(stream)
    from ..segments import SegmentedSource

    expiry = None if credential is not None else sas_expiry(url)  # with a credential, a 403 is its role's
    signed_for = parse_qs(urlsplit(url).query).get("sr", [""])[0]
    if credential is None and signed_for != "c":  # a blob SAS: the one blob of a stream made before segments
        return stream, SegmentedSource(_OneBlob(ReadUrlSource(blob, stream, expiry)), stream)
    query = urlsplit(url).query
    container_url = blob.url.split("?", 1)[0].rsplit("/", 2)[0] + (f"?{query}" if query else "")
    container = ContainerClient.from_container_url(
        container_url, credential=credential, **blob_client_options()
    )
    return stream, SegmentedSource(_ReadUrlContainer(container, stream, expiry), stream)


class _OneBlob:
    """The one segment a blob read URL reaches: a stream stored as one page blob."""

    def __init__(self, source: BlobSource) -> None:
        self._source = source

    def segments(self, stream: str) -> list[Segment]:
        return [Segment(0)] if self._source.size() else []

    def open_segment(self, stream: str, segment: Segment) -> LogSource:
        return self._source


class _ReadUrlContainer:
    """A stream's segments through a read URL signed for its container (or with a credential):
    listed and read with it; a refusal (403) is ReadUrlExpired, as for one blob."""

    def __init__(self, container: ContainerClient, stream: str, expiry: datetime | None) -> None:
        self._container = container
        self._stream = stream
        self._expiry = expiry

    def segments(self, stream: str) -> list[Segment]:
        try:
            return list_segments(self._container, stream)
        except HttpResponseError as error:
            self.open_segment(stream, Segment(0))._raise_if_refused(error)
            raise

    def open_segment(self, stream: str, segment: Segment) -> ReadUrlSource:
        name = segment_name(segment.base, SEALED if segment.sealed else LOG_BLOB)
        return ReadUrlSource(self._container.get_blob_client(f"{stream}/{name}"), stream, self._expiry)


def sas_expiry(url: str) -> datetime | None:
    """When a SAS URL expires: its signed expiry (`se=`), or None if it has none."""
    signed = parse_qs(urlsplit(url).query).get("se")
    if not signed:
        return None
    try:
        expiry = datetime.fromisoformat(signed[0])
    except ValueError:
        return None
    return expiry if expiry.tzinfo else expiry.replace(tzinfo=UTC)
