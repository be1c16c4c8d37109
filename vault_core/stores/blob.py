"""Azure Storage: one page blob `<stream>/log` per stream in a container.

Every data and commit write carries the writer's blob lease; a commit also carries `If-Match` with
the ETag of this writer's last data write, so nothing written by anyone else in between can be
committed over. Readers need only read access to the one blob (a blob SAS, or Entra ID).
"""

from __future__ import annotations

import contextlib
import re
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
    BlobClient,
    BlobLeaseClient,
    BlobSasPermissions,
    BlobServiceClient,
    ContainerClient,
    ExponentialRetry,
    generate_blob_sas,
)

from ..checkpoints import check_group_name
from ..errors import FencedError, ReadUrlExpired, StoreNotFound, StreamBusyError, connection_reason
from ..format import check_stream_name
from .base import Backend, Buffer, LogSource, LogWriter
from .endpoints import is_path_style

if TYPE_CHECKING:
    from azure.data.tables import TableClient

    from ..checkpoints import Checkpoints

LOG_BLOB = "log"
MAX_PUT_PAGE = 4 * 1024 * 1024  # Azure's limit for one Put Page
GROWTH_STEP = 4 * 1024 * 1024
MAX_GROWTH = 1024 * 1024 * 1024
PARALLEL_PUTS = 4
TAKEOVER_ATTEMPTS = 3
CLOCK_SKEW = timedelta(minutes=5)
_CONTAINER_NAME = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


def client_options() -> dict[str, Any]:
    """Options for every blob client: quick retries (the SDK default first waits 15 s)."""
    return {"retry_policy": ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=4)}


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
        service = BlobServiceClient.from_connection_string(connection_string, **client_options())
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
        service = BlobServiceClient(account_url, credential=credential, **client_options())
        return cls(service, container)

    def streams(self) -> list[str]:
        names = []
        try:
            for blob in self._container.list_blobs():
                stream, _, leaf = blob.name.rpartition("/")
                if leaf == LOG_BLOB:
                    try:
                        names.append(check_stream_name(stream))
                    except ValueError:
                        continue
        except ResourceNotFoundError:
            return []
        return sorted(names)

    def _blob(self, stream: str) -> BlobClient:
        return self._container.get_blob_client(f"{stream}/{LOG_BLOB}")

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

    def open_log(self, stream: str, *, lease_seconds: int, takeover: bool = False) -> LogWriter:
        blob = self._blob(stream)
        for _ in range(3):
            try:
                created = _create_page_blob(blob)
            except ResourceNotFoundError:  # the container is new too
                with contextlib.suppress(ResourceExistsError):
                    self._container.create_container()
                created = _create_page_blob(blob)
            try:
                return BlobLog(blob, stream, lease_seconds, takeover=takeover, created=created)
            except ResourceNotFoundError:  # its last writer discarded it meanwhile: make it again
                continue
        raise StreamBusyError(f"stream {stream!r} keeps being created and removed by another writer")

    def open_source(self, stream: str) -> LogSource:
        return BlobSource(self._blob(stream))

    def read_url(self, stream: str, *, expires_in: timedelta = timedelta(hours=1)) -> str:
        """A read-only SAS URL for the stream's blob: signed with the account key when the store
        has one, else a user delegation SAS (the identity needs the Storage Blob Delegator role)."""
        check_stream_name(stream)
        blob = self._blob(stream)
        now = datetime.now(UTC)
        start, expiry = now - CLOCK_SKEW, now + expires_in
        credential = self._service.credential
        signing: dict[str, Any]
        account_key = getattr(credential, "account_key", None)
        if account_key:
            signing = {"account_key": account_key}
        else:
            signing = {"user_delegation_key": self._service.get_user_delegation_key(start, expiry)}
        sas = generate_blob_sas(
            str(self._service.account_name),  # blob.account_name includes the container on path-style URLs
            blob.container_name,
            blob.blob_name,
            permission=BlobSasPermissions(read=True),
            start=start,
            expiry=expiry,
            **signing,
        )
        return f"{blob.url}?{sas}"

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
        if error.status_code != 403:
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
        self._pool: ThreadPoolExecutor | None = None
        self._etag = ""
        self._size = 0
        self.refresh()

    def refresh(self) -> None:
        properties = self._blob.get_blob_properties()
        self._etag = properties.etag
        self._size = properties.size

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
        self._keep_lease()
        try:
            result = self._blob.upload_page(
                record,
                offset=start,
                length=len(record),
                lease=self._lease,
                etag=self._etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except HttpResponseError as error:
            if error.status_code == 412 and self._landed(start, record):
                return  # a retry of a commit whose first attempt succeeded
            self._raise_fenced(error)
        self._etag = str(result["etag"])

    def _landed(self, start: int, record: bytes) -> bool:
        """Whether the log already holds exactly this commit (then our lease still stands)."""
        try:
            self.refresh()
            return self.read(start, len(record)) == record and self._renew()
        except (HttpResponseError, FencedError):
            return False

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

    def _keep_lease(self) -> None:
        """Renew the lease once half of it has passed. A lease that expired while this writer was
        idle is taken back only if nobody else took it and the log did not change."""
        elapsed = time.monotonic() - self._renewed
        if elapsed < self._lease_seconds / 2:
            return
        before = self._etag
        self._renew()
        if elapsed >= self._lease_seconds - 1:
            self.refresh()
            if self._etag != before:
                raise FencedError(f"stream {self._stream!r} changed while this writer's lease had expired")

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


def source_from_url(url: str, *, credential: Any = None) -> tuple[str, LogSource]:
    """The stream name and log of a blob read URL (a SAS URL, or a plain URL with a credential)."""
    if credential is None and "sig" not in parse_qs(urlparse(url).query):
        # Anonymous reads of a private blob answer "not found", which would read as an empty stream.
        raise ValueError(
            f"{url!r} carries no SAS token: pass credential= (e.g. DefaultAzureCredential()) to read it"
        )
    blob = BlobClient.from_blob_url(url, credential=credential, **client_options())
    stream, _, leaf = blob.blob_name.rpartition("/")
    if leaf != LOG_BLOB:
        raise ValueError(f"not a stream read URL: {url!r} (expected .../<stream>/{LOG_BLOB})")
    check_stream_name(stream)
    if credential is not None:  # a refusal is then the identity's (its role), not an expiry
        return stream, BlobSource(blob)
    return stream, ReadUrlSource(blob, stream, sas_expiry(url))


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
