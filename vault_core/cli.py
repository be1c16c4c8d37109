"""The `vault` command line: a thin shell over vault_core for operators and consumers.

Data goes to stdout (plain, or JSON lines with --json); progress and errors go to stderr. Exit
codes: 0 done, 1 failed (the message says what went wrong and what to do), 2 bad usage.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import click

from . import Consumer, Message, ReadResult, StreamReader, open_reader, open_store
from . import format as fmt
from .errors import CorruptDataError, StreamBusyError, UnknownFormatVersion, VaultError
from .lines import BadLine, iso_time, parse_lines, to_json, to_text
from .stores import Store, open_source

# A publish sends at most this many key and value bytes per batch (the HTTP API takes 16 MiB).
PUBLISH_BATCH_BYTES = 8 * 1024 * 1024
# A publish records its progress beside the stream this often (in batches).
PROGRESS_EVERY = 100


class _Group(click.Group):
    """Turns the errors a command can meet into one clear line and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:  # the reader of our output went away (`vault read ... | head`)
            sys.stderr.close()
            sys.exit(1)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as error:
            raise click.ClickException(_describe(error)) from None


def _describe(error: Exception) -> str:
    """An error as one line for people, with what to do next."""
    from .client import Unauthorized

    if isinstance(error, StreamBusyError):
        return f"{error}: stop that writer, or publish through the server that holds the stream (--url)"
    if isinstance(error, Unauthorized):
        return f"{error} (pass the API key with --key, or set VAULT_API_KEY)"
    if isinstance(error, VaultError | ValueError | TypeError | OSError):
        return str(error)
    return _explain(error)


def _explain(error: Exception) -> str:
    import urllib3
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError

    if isinstance(error, ClientAuthenticationError):
        return f"storage refused the credentials: {error.message}; check the connection string or your login"
    if isinstance(error, ServiceRequestError):
        return f"cannot reach the storage account: {error.message}"
    if isinstance(error, HttpResponseError):
        return f"storage answered {error.status_code}: {error.message}"
    if isinstance(error, urllib3.exceptions.HTTPError):
        return f"cannot reach the vault's HTTP API: {error}"
    return f"{type(error).__name__}: {error}"


def _store_option(default: str | None = None) -> Any:
    return click.option(
        "--store",
        "target",
        default=default,
        show_default=default is not None,
        envvar="VAULT_STORE",
        metavar="TARGET",
        help="Where streams live: a directory (embedded store), an Azure Storage connection "
        "string, or an account URL (signs in with DefaultAzureCredential). Env: VAULT_STORE (keeps "
        "a connection string out of the command line).",
    )


_container_option = click.option(
    "--container",
    default="vault",
    show_default=True,
    envvar="VAULT_CONTAINER",
    help="Blob container of the streams, on Azure Storage. Env: VAULT_CONTAINER.",
)
_read_url_option = click.option(
    "--url",
    "read_url",
    metavar="READ_URL",
    help="The stream's read URL (GET /api/streams/STREAM gives one) instead of --store.",
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Output JSON lines.")
_poll_option = click.option(
    "--poll", default=1.0, show_default=True, type=click.FloatRange(0.05), help="Seconds between polls."
)


def _stream_to_read(command: Any) -> Any:
    """STREAM, and where to read it: --store and --container, or --url."""
    for option in reversed((click.argument("stream"), _store_option(), _container_option, _read_url_option)):
        command = option(command)
    return command


@click.group(cls=_Group)
@click.version_option(package_name="message-vault")
def main() -> None:
    """Message Vault: publish-subscribe with replay and batching on Azure Storage."""
    # The Azure SDKs log each failed sign-in attempt and retry; the command says what went wrong once.
    logging.getLogger("azure").setLevel(logging.ERROR)


def _store(target: str | None, container: str) -> Store:
    if not target:
        raise click.UsageError("say where the streams are: --store TARGET (or set VAULT_STORE)")
    if target.lower().startswith(("https://", "http://")):
        return open_store(target, container=container, credential=_azure_login())
    return open_store(target, container=container)


def _azure_login() -> Any:
    """The Azure login an account URL or plain blob URL signs in with, checked now: without one,
    one line that says how to sign in, rather than every credential's complaint, retried."""
    from azure.core.exceptions import ClientAuthenticationError
    from azure.identity import DefaultAzureCredential

    credential = DefaultAzureCredential()
    try:
        credential.get_token("https://storage.azure.com/.default")
    except ClientAuthenticationError:
        raise click.ClickException(
            "no Azure login to sign in with: run `az login` (or set AZURE_TENANT_ID, AZURE_CLIENT_ID and "
            "AZURE_CLIENT_SECRET), or give a connection string, or a read URL with its SAS"
        ) from None
    return credential


def _existing_store(target: str | None, container: str) -> Store:
    """The store, which must exist: a mistyped --store is an error, not an empty store."""
    store = _store(target, container)
    if not store.exists():
        raise click.ClickException(
            f"no store at {store}: check --store (a directory, a connection string or an account URL)"
            + ("" if "://" not in str(store) else " and --container")
        )
    return store


def _reader(stream: str, target: str | None, container: str, read_url: str | None) -> StreamReader:
    """The stream's reader, from its read URL or from the store, which must hold the stream."""
    fmt.check_stream_name(stream)
    if read_url:
        if target:
            raise click.UsageError("give --store or --url, not both")
        signed = "sig=" in read_url or not read_url.lower().startswith(("https://", "http://"))
        named, source = open_source(read_url, credential=None if signed else _azure_login())
        if named != stream:
            raise click.UsageError(f"--url is the read URL of stream {named!r}, not of {stream!r}")
        if source.size() == 0:
            where = read_url.split("?", 1)[0]  # not the SAS
            raise click.ClickException(
                f"no stream at {where}: check the URL (GET /api/streams/{stream} gives a fresh one)"
            )
        return StreamReader(stream, source)
    if not target:
        raise click.UsageError("say where the stream is: --store TARGET (or VAULT_STORE) or --url READ_URL")
    store = _existing_store(target, container)
    if stream not in store.streams():
        raise click.ClickException(
            f"stream {stream!r} does not exist in {store}; `vault streams` lists the streams there"
        )
    return store.reader(stream)


@contextmanager
def _progress(description: str, total: int) -> Iterator[Any]:
    """A progress bar on stderr, shown only when stderr is a terminal; yields update(position)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, TimeRemainingColumn(), console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task(description, total=total)
        yield lambda done: bar.update(task, completed=done)


def _many(count: int, noun: str, plural: str = "") -> str:
    return f"{count:,} {noun if count == 1 else plural or noun + 's'}"


def _emit(as_json: bool, fields: dict[str, Any], text: str) -> None:
    click.echo(json.dumps(fields) if as_json else text)


@main.command()
@_store_option()
@_container_option
@_json_option
def streams(target: str | None, container: str, as_json: bool) -> None:
    """List every stream with its position, size on storage and last append time."""
    store = _existing_store(target, container)
    statuses = [store.reader(name).status() for name in store.streams()]
    if as_json:
        for status in statuses:
            last = iso_time(status.last_append) if status.last_append else None
            fields = {"stream": status.stream, "position": status.position, "size": status.size}
            click.echo(json.dumps({**fields, "last_append": last}))
        return
    if not statuses:
        click.echo(f"no streams in {store}", err=True)
        return
    from rich.console import Console
    from rich.filesize import decimal
    from rich.table import Table

    table = Table("stream", "position", "size", "last append", box=None, header_style="bold")
    for status in statuses:
        last = iso_time(status.last_append) if status.last_append else "-"
        table.add_row(status.stream, f"{status.position:,}", decimal(status.size), last)
    Console(width=200).print(table)


@main.command()
@click.argument("stream")
@click.argument("source", default="-", metavar="[FILE|-]")
@_store_option()
@_container_option
@click.option("--url", "api_url", help="Publish through the vault's HTTP API at this URL instead of --store.")
@click.option(
    "--key", envvar="VAULT_API_KEY", help="The HTTP API's key (x-functions-key). Env: VAULT_API_KEY."
)
@click.option(
    "--batch-size",
    default=1000,
    show_default=True,
    type=click.IntRange(1, fmt.MAX_BATCH_MESSAGES),
    help="Messages per batch (a batch also stays under 8 MiB).",
)
@click.option("--again", is_flag=True, help="Publish the input even if it was published to STREAM before.")
@_json_option
def publish(
    stream: str,
    source: str,
    target: str | None,
    container: str,
    api_url: str | None,
    key: str | None,
    batch_size: int,
    again: bool,
    as_json: bool,
) -> None:
    """Append the messages of FILE (or stdin), one JSON object per line: {"key": "...", "value":
    "text"} or {"key": "...", "value_b64": "base64"}. The whole input is checked before anything
    is appended, so a bad line changes nothing.

    Each line is appended once, whatever happens: batch ids are derived from the input, so running
    the same command again after Ctrl-C, a crash or an error appends only what is missing. Use
    --again to publish the same input anew."""
    fmt.check_stream_name(stream)
    if bool(api_url) == bool(target):
        raise click.UsageError("give --store (or VAULT_STORE) to append directly, or --url for the HTTP API")
    name = source if source != "-" else "stdin"
    with _checked_input(source, batch_size) as (lines, plan, digest):
        if not plan:
            raise click.ClickException(f"no messages in {name}: nothing to publish")
        # Batch k of this input is `pub-<fingerprint>-<k>` whoever publishes it, whenever.
        salt = uuid.uuid4().hex if again else ""
        fingerprint = hashlib.sha256(f"{stream}\0{batch_size}\0{salt}\0{digest}".encode()).hexdigest()[:32]
        ids = [f"pub-{fingerprint}-{k}" for k in range(len(plan))]
        destination = _Destination(stream, target, container, api_url, key, fingerprint)

        def first_message(k: int) -> Message:
            lines.seek(0)
            batch = next(itertools.islice(_batches(parse_lines(lines), batch_size), k, None))
            lines.seek(0)
            return batch[0]

        try:
            done = destination.committed(ids, first_message)
            skipped = sum(plan[:done])
            if done == len(plan):
                _emit(
                    as_json,
                    {"stream": stream, "messages": 0, "batches": 0, "skipped": skipped},
                    f"nothing to publish: all {_many(skipped, 'message')} of {name} are in {stream} already "
                    "(use --again to publish them anew)",
                )
                return
            if done:
                already = f"{_many(skipped, 'line')} of {name} ({_many(done, 'batch', 'batches')})"
                click.echo(f"resuming: the first {already} are in {stream} already", err=True)
            first = last = position = 0
            started: int | None = None  # where this run's last committed batch starts
            sent = done
            stopping = _StopAfterBatch()
            try:
                with stopping, _progress(f"publishing to {stream}", sum(plan)) as update:
                    update(skipped)
                    for k, batch in enumerate(_batches(parse_lines(lines), batch_size)):
                        if k < done:
                            continue
                        if stopping.asked:
                            break
                        result = destination.append(batch, ids[k])
                        first = first or result.offsets[0]
                        started, last, position = result.offsets[0], result.offsets[-1], result.position
                        sent = k + 1
                        update(sum(plan[:sent]))
                        if sent % PROGRESS_EVERY == 0:
                            destination.remember(sent, started)
            except KeyboardInterrupt:  # Ctrl-C twice: the batch in flight may or may not be in
                destination.remember(sent, started)
                in_flight = plan[sent] if sent < len(plan) else 0
                click.echo(
                    f"\nstopped: lines 1 to {sum(plan[:sent]):,} of {name} are in {stream}, and the "
                    f"{in_flight:,} after them may be; run the same command again to append the rest, "
                    "each line once",
                    err=True,
                )
                sys.exit(130)
            except Exception as error:
                with contextlib.suppress(Exception):
                    destination.remember(sent, started)
                held = sum(plan[:sent])
                raise click.ClickException(
                    f"{_describe(error)}. "
                    + (
                        f"Lines 1 to {held:,} of {name} are in {stream}; run the same command again to "
                        "append the rest, each line once"
                        if held
                        else "Nothing was published"
                    )
                ) from None
            if stopping.asked and sent < len(plan):
                destination.remember(sent, started)
                click.echo(
                    f"interrupted: lines 1 to {sum(plan[:sent]):,} of {name} are in {stream} "
                    f"({_many(sent, 'batch', 'batches')} of {len(plan):,}); run the same command again to "
                    "append the rest, each line once",
                    err=True,
                )
                sys.exit(130)
            destination.remember(sent, started)
        finally:
            destination.close()
    count = sum(plan) - skipped
    fields = {"stream": stream, "messages": count, "batches": len(plan) - done, "first_offset": first}
    _emit(
        as_json,
        {**fields, "last_offset": last, "position": position, "skipped": skipped},
        f"published {_many(count, 'message')} in {_many(len(plan) - done, 'batch', 'batches')} to {stream}: "
        f"offsets {first:,} to {last:,}, stream position now {position:,}"
        + (f" ({_many(skipped, 'message')} of {name} were there already)" if skipped else ""),
    )


@contextmanager
def _checked_input(source: str, batch_size: int) -> Iterator[tuple[IO[bytes], list[int], str]]:
    """The input, every line checked, rewound for publishing; with its plan (the number of
    messages in each batch it makes) and the SHA-256 of its bytes. Stdin is kept in a temporary
    file meanwhile, since it can be read only once."""
    with tempfile.TemporaryFile() if source == "-" else click.open_file(source, "rb") as lines:
        digest = hashlib.sha256()
        if source == "-":
            for line in sys.stdin.buffer:
                lines.write(line)
                digest.update(line)
        else:
            for chunk in iter(lambda: lines.read(1 << 20), b""):
                digest.update(chunk)
        lines.seek(0)
        try:
            plan = [len(batch) for batch in _batches(parse_lines(lines), batch_size)]
        except BadLine as error:
            raise click.ClickException(
                f"{source if source != '-' else 'stdin'}, {error}; nothing was published"
            ) from None
        lines.seek(0)
        yield lines, plan, digest.hexdigest()


def _batches(messages: Iterator[Message], size: int) -> Iterator[list[Message]]:
    batch: list[Message] = []
    held = 0
    for message in messages:
        weight = len(message.key) + len(message.value)
        if batch and (len(batch) == size or held + weight > PUBLISH_BATCH_BYTES):
            yield batch
            batch, held = [], 0
        batch.append(message)
        held += weight
    if batch:
        yield batch


class _StopAfterBatch:
    """While in use, Ctrl-C asks the publish to stop after the batch in flight, so that what it
    reports as committed is exact; a second Ctrl-C stops it at once (KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.asked = False
        self._previous: Any = None

    def _interrupt(self, signum: int, frame: Any) -> None:
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True
        click.echo("\nstopping after the batch in flight (Ctrl-C again to stop at once)", err=True)

    def __enter__(self) -> _StopAfterBatch:
        self._previous = signal.signal(signal.SIGINT, self._interrupt)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._previous)


class _Destination:
    """Where a publish goes, the store's writer or the HTTP API, and what it already holds of the
    input: the newest of the input's batch ids the stream remembers (its last 1,024), and a
    progress record kept every PROGRESS_EVERY batches and on exit, for when more than 1,024 other
    batches were appended since: beside the stream for a store, in this user's state folder
    ($XDG_STATE_HOME/message-vault, ~/.local/state/message-vault by default) for the HTTP API."""

    def __init__(
        self,
        stream: str,
        target: str | None,
        container: str,
        api_url: str | None,
        key: str | None,
        fingerprint: str,
    ) -> None:
        self.stream = stream
        self._store = None if api_url else _store(target, container)
        self._client: Any = None
        self._writer: Any = None
        self._record = f"_publish/{stream}/{fingerprint}.json"
        if api_url:
            from .client import VaultClient

            self._client = VaultClient(api_url, key=key)
            state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
            where = hashlib.sha256(f"{api_url.rstrip('/')}\0{fingerprint}".encode()).hexdigest()[:32]
            self._local_record = state / "message-vault" / "publish" / f"{where}.json"

    def committed(self, ids: list[str], first_message: Callable[[int], Message]) -> int:
        """How many of the input's batches, in order, the stream holds already. The progress
        record counts only if the stream still holds, where it says, the first message of the last
        batch it counts (the stream was not removed and made again since, say)."""
        from .client import NotFound

        if self._store is not None:
            reader = self._store.reader(self.stream)
        else:
            try:
                reader = open_reader(self._client.stream_info(self.stream).read_url)
            except NotFound:  # no such stream (any more): nothing of the input is in it
                return 0
        with reader:
            latest = reader.latest_of(ids)
            done = ids.index(latest) + 1 if latest else 0
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError, VaultError):
                record = json.loads(self._read_record())
                batches, offset = int(record["batches"]), int(record["offset"])
                if batches > done:
                    found = reader.read(offset, max_messages=1).messages
                    if found and (found[0].key, found[0].value) == tuple(first_message(batches - 1)):
                        done = batches
        return done

    def append(self, batch: list[Message], batch_id: str) -> Any:
        if self._client is not None:
            return self._client.publish(self.stream, batch, idempotency_key=batch_id)
        from azure.core.exceptions import AzureError
        from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

        if self._writer is None:
            assert self._store is not None
            self._writer = self._store.writer(self.stream)
        # A failed append may have landed; retried with its batch id, it is appended once either way.
        retrying = Retrying(
            retry=retry_if_exception_type((AzureError, ConnectionError, TimeoutError)),
            stop=stop_after_attempt(4),
            wait=wait_exponential(multiplier=0.5, max=8),
            reraise=True,
        )
        return retrying(self._writer.append, batch, batch_id=batch_id)

    def remember(self, batches: int, offset: int | None) -> None:
        """Record that the input's first `batches` batches are in the stream, the last one's first
        message at `offset` (None: this run appended nothing, the record stands)."""
        if offset is None:
            return
        data = json.dumps({"batches": batches, "offset": offset}).encode()
        if self._store is not None:
            self._store.put_object(self._record, data)
            return
        self._local_record.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = self._local_record.with_name(self._local_record.name + ".partial")
        partial.write_bytes(data)
        os.replace(partial, self._local_record)

    def _read_record(self) -> bytes:
        if self._store is not None:
            return self._store.get_object(self._record)
        return self._local_record.read_bytes()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._client is not None:
            self._client.close()


def _parse_time(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time, e.g. 2026-11-22T09:30:00Z") from None


@main.command()
@_stream_to_read
@click.option(
    "--from",
    "start",
    metavar="OFFSET",
    type=click.IntRange(0),
    help="Start at this offset (default: the beginning).",
)
@click.option(
    "--from-time",
    metavar="ISO_TIME",
    callback=_parse_time,
    help="Start at the first message appended at or after this ISO 8601 time (UTC unless it says).",
)
@click.option("--limit", type=click.IntRange(1), help="Stop after this many messages.")
@click.option("--follow", "-f", is_flag=True, help="Keep waiting for new messages until Ctrl-C.")
@click.option(
    "--group",
    help="Read as this consumer group: start from its checkpoint and move it past each batch printed.",
)
@click.option(
    "--exclusive",
    is_flag=True,
    help="With --group: claim the stream for the group first; while another consumer holds it, wait.",
)
@_poll_option
@_json_option
def read(
    stream: str,
    target: str | None,
    container: str,
    read_url: str | None,
    start: int | None,
    from_time: datetime | None,
    limit: int | None,
    follow: bool,
    group: str | None,
    exclusive: bool,
    poll: float,
    as_json: bool,
) -> None:
    """Print the messages of STREAM: offset, time, key and value (text when it is UTF-8, else
    base64:...), tab-separated; or JSON lines with --json."""
    if start is not None and from_time is not None:
        raise click.UsageError("give --from or --from-time, not both")
    reader = _reader(stream, target, container, read_url)
    position = reader.seek_time(from_time) if from_time is not None else start or 0
    if group is None:
        if exclusive:
            raise click.UsageError("--exclusive claims the stream for a consumer group: give --group too")
        _print_batches(reader.batches(position, follow=follow, poll_interval=poll), limit, as_json)
        return
    if not target:
        raise click.UsageError("--group keeps the group's checkpoint in the store: give --store, not --url")
    with _store(target, container).checkpoints(group) as checkpoints:
        consumer = Consumer(
            reader, checkpoints, start=position, exclusive=exclusive
        )  # start: for a new group
        _print_batches(consumer.batches(follow=follow, poll_interval=poll), limit, as_json, consumer)


@main.command()
@click.argument("group", required=False)
@_store_option()
@_container_option
@_json_option
def groups(group: str | None, target: str | None, container: str, as_json: bool) -> None:
    """How far behind each consumer group is (or only GROUP), per stream it reads: its checkpoint,
    the stream's position, the lag in bytes, and how long ago the first message it has not read
    was appended."""
    from .checkpoints import check_group_name
    from .consumer import groups as group_lags

    store = _existing_store(target, container)
    if group is not None:
        check_group_name(group)
    lags = group_lags(store, group)
    if group is not None and not lags:
        raise click.ClickException(
            f"consumer group {group!r} has no checkpoint in {store}; `vault groups` lists the groups there"
        )
    now = datetime.now(UTC)
    if as_json:
        for lag in lags:
            oldest = iso_time(lag.oldest_unread) if lag.oldest_unread else None
            click.echo(
                json.dumps(
                    {
                        "group": lag.group,
                        "stream": lag.stream,
                        "checkpoint": lag.checkpoint,
                        "position": lag.position,
                        "lag_bytes": lag.lag_bytes,
                        "behind_seconds": round(lag.behind(now), 3),
                        "oldest_unread": oldest,
                    }
                )
            )
        return
    if not lags:
        click.echo(f"no consumer groups in {store}", err=True)
        return
    from rich.console import Console
    from rich.filesize import decimal
    from rich.table import Table

    table = Table("group", "stream", "checkpoint", "position", "lag", "behind", box=None, header_style="bold")
    for lag in lags:
        table.add_row(
            lag.group,
            lag.stream,
            f"{lag.checkpoint:,}",
            f"{lag.position:,}",
            decimal(lag.lag_bytes),
            _span(lag.behind(now)),
        )
    Console(width=200).print(table)


def _span(seconds: float) -> str:
    """A duration for people: 0 s, 42 s, 3 min 20 s, 2 h 5 min, 3 d 4 h."""
    whole = int(seconds)
    for unit, size, smaller, small_size in (
        ("d", 86400, "h", 3600),
        ("h", 3600, "min", 60),
        ("min", 60, "s", 1),
    ):
        if whole >= size:
            rest = whole % size // small_size
            return f"{whole // size} {unit}" + (f" {rest} {smaller}" if rest else "")
    return f"{whole} s"


@main.command()
@_stream_to_read
@_poll_option
@_json_option
def tail(
    stream: str, target: str | None, container: str, read_url: str | None, poll: float, as_json: bool
) -> None:
    """Print messages as they are appended to STREAM, from now on, until Ctrl-C."""
    reader = _reader(stream, target, container, read_url)
    position = reader.position()
    click.echo(f"following {stream} from position {position:,} (Ctrl-C to stop)", err=True)
    _print_batches(reader.batches(position, follow=True, poll_interval=poll), None, as_json)


def _print_batches(
    batches: Iterator[ReadResult], limit: int | None, as_json: bool, consumer: Consumer | None = None
) -> None:
    """Print each batch as it comes; with a consumer, the group's checkpoint moves past what was
    printed (to the middle of a batch when --limit ends there)."""
    line = to_json if as_json else to_text
    left = limit
    try:
        for batch in batches:
            messages = batch.messages if left is None else batch.messages[:left]
            sys.stdout.write("".join(line(message) + "\n" for message in messages))
            sys.stdout.flush()  # whoever reads our output sees each batch as it comes
            if left is not None:
                left -= len(messages)
                if left == 0:
                    if consumer is not None:
                        rest = batch.messages[len(messages) :]
                        consumer.commit(rest[0].offset if rest else batch.next_position)
                    return
    except KeyboardInterrupt:  # how a follow ends
        return


@main.command()
@_stream_to_read
@_json_option
def verify(stream: str, target: str | None, container: str, read_url: str | None, as_json: bool) -> None:
    """Read every record of STREAM and check every checksum and offset. Exits 1 and reports the
    position of the first damage if there is any."""
    reader = _reader(stream, target, container, read_url)
    try:
        with _progress(f"verifying {stream}", reader.position()) as update:
            report = reader.verify(progress=update)
    except CorruptDataError as damage:
        if as_json:
            click.echo(
                json.dumps(
                    {"stream": stream, "ok": False, "damage_at": damage.position, "error": damage.detail}
                )
            )
            sys.exit(1)
        if isinstance(damage, UnknownFormatVersion):
            raise click.ClickException(
                f"stream {stream!r} was written in format version {damage.version} by a newer Message "
                "Vault: upgrade to read it (its commit's checksum holds: nothing is damaged)"
            ) from None
        raise click.ClickException(
            f"{damage}. Everything before position {damage.position} is intact; restore the stream "
            "from a copy (vault mirror) or contact whoever operates its storage"
        ) from None
    _emit(
        as_json,
        {
            "stream": stream,
            "ok": True,
            "position": report.position,
            "batches": report.batches,
            "messages": report.messages,
        },
        f"{stream}: {_many(report.batches, 'batch', 'batches')}, {_many(report.messages, 'message')}, "
        f"{report.position:,} bytes; "
        "every checksum and offset is intact",
    )


@main.command()
@click.argument("stream")
@click.option(
    "--to",
    "path",
    required=True,
    type=click.Path(file_okay=False),
    help="The local directory to keep the copy in (an embedded store).",
)
@_store_option()
@_container_option
@_read_url_option
@_json_option
def mirror(
    stream: str, path: str, target: str | None, container: str, read_url: str | None, as_json: bool
) -> None:
    """Copy STREAM into a local store at PATH, byte for byte, checking every batch; run again to
    copy only what is new. Read the copy at disk speed with `vault read STREAM --store PATH`."""
    from .local_copy import mirror as mirror_stream

    reader = _reader(stream, target, container, read_url)
    with _progress(f"mirroring {stream}", reader.position()) as update:
        result = mirror_stream(reader, path, progress=update)
    copied = result.position - result.start
    _emit(
        as_json,
        {
            "stream": stream,
            "path": str(result.path),
            "start": result.start,
            "position": result.position,
            "copied": copied,
        },
        f"{stream}: copy in {result.path} is at position {result.position:,} "
        + (f"({copied:,} bytes copied from position {result.start:,})" if copied else "(it was up to date)"),
    )


@main.command()
@_store_option(default=".vault-demo")
@_container_option
def demo(target: str, container: str) -> None:
    """Serve the HTTP API on a free loopback port, publish a few batches of order events through
    it (retrying one), then replay the stream straight from storage through its read URL."""
    import socket
    import threading

    import uvicorn

    from .client import VaultClient
    from .server import create_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = _store(target, container)
    server = uvicorn.Server(uvicorn.Config(create_app(store), "127.0.0.1", port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.02)
    url = f"http://127.0.0.1:{port}/api"
    stream = "demo-orders"
    click.echo(f"vault serve on {url}, store {store}")
    try:
        with VaultClient(url) as client:
            click.echo("\npublishing through the HTTP API")
            run, this_run = uuid.uuid4().hex[:8], 0
            for order in range(1, 4):
                events = [
                    Message("order-created", json.dumps({"order": order, "items": order * 2}).encode()),
                    Message("order-paid", json.dumps({"order": order, "amount": 9.5 * order}).encode()),
                ]
                result = client.publish(stream, events, idempotency_key=f"demo-{run}-{order}")
                this_run = this_run or result.offsets[0]
                click.echo(f"  batch {order}: offsets {result.offsets}, committed position {result.position}")
            retried = client.publish(stream, events, idempotency_key=f"demo-{run}-3")
            click.echo(
                f"  batch 3 retried with its Idempotency-Key: offsets {retried.offsets}, nothing appended"
            )
            info = client.stream_info(stream)
    finally:
        server.should_exit = True
        thread.join()
    first = result.offsets[0]
    click.echo(f"\nreplaying this run's batches straight from storage, via {info.read_url}")
    reader = open_reader(info.read_url)
    for message in reader.replay(this_run):
        when = message.timestamp.isoformat(timespec="milliseconds")
        click.echo(f"  {message.offset:>8}  {when}  {message.key:<14} {message.value.decode()}")
    page = reader.read(first, max_messages=1)
    click.echo(f"\nreading one message from offset {first}: {page.messages[0].key}")
    click.echo(f"the next read continues at {page.next_position}")


@main.command()
@_store_option(default=".vault")
@_container_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=7071, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--api-key",
    envvar="VAULT_API_KEY",
    help="Require this key, in the x-functions-key header or ?code= (as Azure Functions takes "
    "function keys). Env: VAULT_API_KEY.",
)
@click.option(
    "--wait",
    "wait_seconds",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0, 600),
    help="Seconds a POST waits for its commit before answering 202.",
)
@click.option(
    "--lease-seconds",
    default=60,
    show_default=True,
    type=click.IntRange(15, 60),
    help="The writers' blob lease: after a crash, how long a restarted server waits for its streams.",
)
@click.option(
    "--takeover",
    is_flag=True,
    help="Take each stream over from any other writer at once (fencing it) instead of waiting "
    "for its lease: for a server that is its streams' only writer, restarted after a crash.",
)
@click.option(
    "--max-bodies",
    "max_bodies_mib",
    default=64,
    show_default=True,
    type=click.IntRange(16, 65536),
    help="MiB of request bodies held at once; past it, a POST is answered 503 with Retry-After.",
)
def serve(
    target: str,
    container: str,
    host: str,
    port: int,
    api_key: str | None,
    wait_seconds: float,
    lease_seconds: int,
    takeover: bool,
    max_bodies_mib: int,
) -> None:
    """Serve the HTTP API on this machine, with one in-process writer per stream."""
    import socket

    import uvicorn

    from .server import create_app

    try:  # a port in use is one line here, not uvicorn's log
        socket.create_server((host, port), reuse_port=False).close()
    except OSError as error:
        raise click.ClickException(
            f"cannot listen on {host}:{port} ({os.strerror(error.errno or 0)}): another process has it; "
            "pass --port"
        ) from None
    store = _store(target, container)
    app = create_app(
        store,
        api_key=api_key,
        wait_seconds=wait_seconds,
        lease_seconds=lease_seconds,
        takeover=takeover,
        body_budget=max_bodies_mib * 1024 * 1024,
    )
    # The store as it prints itself: a connection string's key or a SAS never reaches the output.
    click.echo(f"Message Vault on http://{host}:{port}/api (store: {store})", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


if __name__ == "__main__":
    main()
