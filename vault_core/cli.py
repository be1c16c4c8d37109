"""The `vault` command line: a thin shell over vault_core for operators and consumers.

Data goes to stdout (plain, or JSON lines with --json); progress and errors go to stderr. Exit
codes: 0 done, 1 failed (the message says what went wrong and what to do), 2 bad usage.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO, Any
from urllib.parse import urlsplit

import click

from . import Consumer, Message, ReadResult, StreamReader, open_reader, open_store
from . import format as fmt
from .errors import CorruptDataError, StreamBusyError, UnknownFormatVersion, VaultError
from .lines import iso_time, to_json, to_text
from .stores import Store, open_source
from .stores.base import log_exists


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
    if isinstance(error, Unauthorized) and "not accepted" in str(error):
        return f"{error}: check the key given with --key or VAULT_API_KEY"
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
        where = re.search(r"host='([^']+)', port=(\d+)", str(error))
        reason = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(error))
        if where:
            why = reason[1] if reason else error
            return (
                f"cannot reach the vault's HTTP API at {where[1]}:{where[2]} ({why}): is it running "
                "there (vault serve, func start)? Check --url"
            )
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
_url_option = click.option(
    "--url",
    metavar="URL",
    help="The vault's HTTP address (http://HOST:PORT/api) instead of --store; for the reading "
    "commands also a stream's read URL (GET /api/streams/STREAM gives one).",
)
_key_option = click.option(
    "--key",
    envvar="VAULT_API_KEY",
    help="The HTTP API's key (x-functions-key), with --url. Env: VAULT_API_KEY.",
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Output JSON lines.")
_poll_option = click.option(
    "--poll", default=1.0, show_default=True, type=click.FloatRange(0.05), help="Seconds between polls."
)


def _stream_to_read(command: Any) -> Any:
    """STREAM, and where to read it: --store and --container, or --url (and --key)."""
    for option in reversed(
        (click.argument("stream"), _store_option(), _container_option, _url_option, _key_option)
    ):
        command = option(command)
    return command


def _one_place(target: str | None, url: str | None) -> tuple[str | None, str | None]:
    """--store and --url, of which one says where: an option given on the command line wins over
    one from the environment (VAULT_STORE), and two given on the command line are refused. So is
    a --key given without the --url it is for."""
    context = click.get_current_context()
    explicit = click.core.ParameterSource.COMMANDLINE
    if not url and context.params.get("key") and context.get_parameter_source("key") is explicit:
        raise click.UsageError(
            "--key is the HTTP API's key, and --store reads no API: give --url too, or no --key"
        )
    if target and url:
        if context.get_parameter_source("target") is not explicit:
            return None, url
        raise click.UsageError("--store and --url name two places: give one of them")
    return target, url


def _is_read_url(url: str) -> bool:
    """A stream's read URL (a file:// URL, a blob URL with or without its SAS) rather than the
    vault's HTTP address."""
    parts = urlsplit(url)
    if parts.scheme.lower() == "file" or "sig=" in parts.query:
        return True
    return parts.path.endswith("/log") and "/api/" not in parts.path + "/"


def _api_base(url: str) -> str:
    """The vault's HTTP address as given (http://host:port, .../api, or a route under it), as
    http://host:port/api."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise click.BadParameter(
            f"{url!r} is not an HTTP address: give the vault's, like http://127.0.0.1:7071/api",
            param_hint="--url",
        )
    path = parts.path.rstrip("/")
    path = path[: path.index("/api")] if "/api" in path else path
    return f"{parts.scheme}://{parts.netloc}{path}/api"


@click.group(cls=_Group)
@click.version_option(package_name="message-vault")
def main() -> None:
    """Message Vault: publish-subscribe with replay and batching on Azure Storage."""
    # The Azure SDKs log each failed sign-in attempt and retry; the command says what went wrong once.
    logging.getLogger("azure").setLevel(logging.ERROR)


def _store(target: str | None, container: str) -> Store:
    """The store at TARGET; one on Azure Storage is reached once first, so that an account that
    cannot be reached is one quick line rather than retries."""
    if not target:
        raise click.UsageError("say where the streams are: --store TARGET (or set VAULT_STORE)")
    if target.strip().lower().startswith("memory:"):
        raise click.BadParameter(
            f"{target} keeps streams in the memory of the process that opens it, and this command's "
            "is gone when it ends: give a directory, a connection string or an account URL",
            param_hint="--store / VAULT_STORE",
        )
    try:
        if target.lower().startswith(("https://", "http://")):
            store = open_store(target, container=container, credential=_azure_login())
        else:
            store = open_store(target, container=container)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--store / VAULT_STORE") from None
    if "://" in str(store):  # on Azure Storage
        store.exists()
    return store


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


def _client(url: str, key: str | None) -> Any:
    from .client import VaultClient

    return VaultClient(_api_base(url), key=key)


def _existing_store(target: str | None, container: str) -> Store:
    """The store, which must exist: a mistyped --store is an error, not an empty store."""
    store = _store(target, container)
    if not store.exists():
        raise click.ClickException(
            f"no store at {store}: check --store (a directory, a connection string or an account URL)"
            + ("" if "://" not in str(store) else " and --container")
        )
    return store


def _reader(
    stream: str,
    target: str | None,
    container: str,
    url: str | None,
    key: str | None,
    *,
    wait_for_it: bool = False,
) -> StreamReader:
    """The stream's reader, from the store, which must hold the stream; from its read URL; or from
    the vault's HTTP address, which says where the stream's log is (and renews that as it
    expires). With `wait_for_it`, a stream that does not exist yet is waited for."""
    missing = f"stream {stream!r} does not exist yet: waiting for it (Ctrl-C to stop)"
    fmt.check_stream_name(stream)
    target, url = _one_place(target, url)
    if url and _is_read_url(url):
        signed = "sig=" in url or not url.lower().startswith(("https://", "http://"))
        named, source = open_source(url, credential=None if signed else _azure_login())
        if named != stream:
            raise click.UsageError(f"--url is the read URL of stream {named!r}, not of {stream!r}")
        exists = log_exists(source)
        if not exists and wait_for_it:
            click.echo(missing, err=True)
        elif not exists:
            where = url.split("?", 1)[0]  # not the SAS
            raise click.ClickException(
                f"no stream at {where}: check the URL (GET /api/streams/{stream} gives a fresh one)"
            )
        return StreamReader(stream, source)
    if url:
        from .client import NotFound

        said = False
        while True:
            try:
                return open_reader(f"{_api_base(url)}/streams/{stream}", key=key)
            except NotFound:
                if not wait_for_it:
                    break
                if not said:
                    click.echo(missing, err=True)
                    said = True
                time.sleep(1.0)
        raise click.ClickException(
            f"stream {stream!r} does not exist at {_api_base(url)}; `vault streams --url {url}` lists "
            "the streams there"
        )
    if not target:
        raise click.UsageError(
            "say where the stream is: --store TARGET (or VAULT_STORE), or --url with the vault's HTTP "
            "address or the stream's read URL"
        )
    store = _existing_store(target, container)
    if not store.has_stream(stream):
        if not wait_for_it:
            raise click.ClickException(
                f"stream {stream!r} does not exist in {store}; `vault streams` lists the streams there"
            )
        click.echo(missing, err=True)
    return store.reader(stream)


@contextmanager
def _progress(description: str, total: int, *, unit: str = "bytes") -> Iterator[Any]:
    """A progress bar on stderr, shown only when stderr is a terminal, counting bytes or messages;
    yields update(done, total=None)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = Console(stderr=True)
    counted: tuple[Any, ...] = (
        (DownloadColumn(), TransferSpeedColumn())
        if unit == "bytes"
        else (MofNCompleteColumn(), TextColumn(unit))
    )
    columns = (TextColumn("{task.description}"), BarColumn(), *counted, TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task(description, total=total or None)

        def update(done: int, total: int | None = None) -> None:
            bar.update(task, completed=done, total=total)  # total None: as it was

        yield update


def _many(count: int, noun: str, plural: str = "") -> str:
    return f"{count:,} {noun if count == 1 else plural or noun + 's'}"


def _emit(as_json: bool, fields: dict[str, Any], text: str) -> None:
    click.echo(json.dumps(fields) if as_json else text)


@main.command()
@_store_option()
@_container_option
@_url_option
@_key_option
@_json_option
def streams(target: str | None, container: str, url: str | None, key: str | None, as_json: bool) -> None:
    """List every stream with its position, size on storage and last append time (through the
    HTTP API, with --url: its position and last append time)."""
    target, url = _one_place(target, url)
    if url:
        with _client(url, key) as client:
            listed = client.streams()
        where = _api_base(url)
        statuses: list[Any] = [(s.stream, s.position, None, s.last_append) for s in listed]
    else:
        store = _existing_store(target, container)
        where = str(store)
        statuses = [tuple(store.reader(name).status()) for name in store.streams()]
    if as_json:
        for name, position, size, last_append in statuses:
            last = iso_time(last_append) if last_append else None
            click.echo(json.dumps({"stream": name, "position": position, "size": size, "last_append": last}))
        return
    if not statuses:
        click.echo(f"no streams in {where}", err=True)
        return
    from rich.console import Console
    from rich.filesize import decimal
    from rich.table import Table

    table = Table("stream", "position", "size", "last append", box=None, header_style="bold")
    for name, position, size, last_append in statuses:
        last = iso_time(last_append) if last_append else "-"
        table.add_row(name, str(position), "-" if size is None else decimal(size), last)
    Console(width=200).print(table)


@main.command()
@click.argument(
    "stream",
)
@click.argument(
    "source",
    default="-",
    metavar="[FILE|-]",
    type=click.Path(exists=True, dir_okay=False, allow_dash=True),
)
@_store_option()
@_container_option
@_url_option
@_key_option
@click.option(
    "--batch-size",
    default=1000,
    show_default=True,
    type=click.IntRange(1, fmt.MAX_BATCH_MESSAGES),
    help="Messages per batch (a batch also stays under 8 MiB).",
)
@click.option(
    "--again", is_flag=True, help="Publish the input anew, as new messages, even where it is in STREAM."
)
@_json_option
def publish(
    stream: str,
    source: str,
    target: str | None,
    container: str,
    url: str | None,
    key: str | None,
    batch_size: int,
    again: bool,
    as_json: bool,
) -> None:
    """Append the messages of FILE (or stdin), one JSON object per line: {"key": "...", "value":
    "text"} or {"key": "...", "value_b64": "base64"} (what `vault read --json` prints). The whole
    input is checked before anything is appended, so a bad line changes nothing.

    Each line is appended once, whatever happens: what is in STREAM already is recognised by its
    content, whatever the batch size, so running the command again after Ctrl-C, a crash or an
    error, or after lines were added to the end of FILE, appends only the lines that are not in
    yet. An input whose published part changed since is refused; --again publishes it anew."""
    from .publish import PublishIncomplete, PublishProgress
    from .publish import publish as publish_input

    fmt.check_stream_name(stream)
    target, url = _one_place(target, url)
    if not target and not url:
        raise click.UsageError(
            "say where to publish: --store TARGET (or VAULT_STORE) to append directly, or --url for the "
            "vault's HTTP API"
        )
    if url and _is_read_url(url):
        raise click.UsageError(
            "--url is a stream's read URL, which only reads: publish to the vault's HTTP address "
            "(http://HOST:PORT/api) or to --store"
        )
    name = source if source != "-" else "stdin"
    latest = PublishProgress(0, 0, 0)
    stopping = _StopAfterBatch()
    with _spooled(source) as lines, _progress(f"publishing to {stream}", 0, unit="messages") as update:

        def seen(progress: PublishProgress) -> None:
            nonlocal latest
            if latest.total == 0 and 0 < progress.held < progress.total:
                already = f"{_many(progress.held, 'line')} of {name}"
                click.echo(f"resuming: the first {already} are in {stream} already", err=True)
            latest = progress
            update(progress.held, progress.total)

        try:
            with stopping:
                result = publish_input(
                    stream,
                    lines,
                    name=name,
                    store=_store(target, container) if target else None,
                    url=_api_base(url) if url else None,
                    key=key,
                    batch_size=batch_size,
                    again=again,
                    progress=seen,
                    should_stop=lambda: stopping.asked,
                )
        except KeyboardInterrupt:  # Ctrl-C twice: the batch in flight may or may not be in
            click.echo(
                f"\nstopped: lines 1 to {latest.held:,} of {name} are in {stream}, and the "
                f"{latest.sending:,} after them may be; run the same command again to append the rest, "
                "each line once",
                err=True,
            )
            sys.exit(130)
        except PublishIncomplete as stopped:
            cause = stopped.__cause__ if isinstance(stopped.__cause__, Exception) else stopped
            raise click.ClickException(
                f"{_describe(cause)}. "
                + (
                    f"Lines 1 to {stopped.held:,} of {name} are in {stream}; run the same command again to "
                    "append the rest, each line once"
                    if stopped.held
                    else "Nothing was published"
                )
            ) from None
    if not result.complete:
        click.echo(
            f"interrupted: lines 1 to {result.held:,} of the {result.total:,} of {name} are in {stream}; "
            "run the same command again to append the rest, each line once",
            err=True,
        )
        sys.exit(130)
    fields = {
        "stream": stream,
        "messages": result.published,
        "batches": result.batches,
        "skipped": result.skipped,
        "first_offset": result.first_offset,
        "last_offset": result.last_offset,
        "position": result.position,
        "new_stream": result.created,
    }
    if not result.published:
        _emit(
            as_json,
            fields,
            f"nothing to publish: all {_many(result.skipped, 'message')} of {name} are in {stream} already "
            "(use --again to publish them anew)",
        )
        return
    _emit(
        as_json,
        fields,
        f"published {_many(result.published, 'message')} in {_many(result.batches, 'batch', 'batches')} to "
        f"{stream}{' (new stream)' if result.created else ''}: offsets {result.first_offset} to "
        f"{result.last_offset}, stream position now {result.position}"
        + (f" ({_many(result.skipped, 'message')} of {name} were there already)" if result.skipped else ""),
    )


@contextmanager
def _spooled(source: str) -> Iterator[IO[bytes]]:
    """The input as a file that can be read again: stdin, which can be read only once, is kept in
    a temporary file meanwhile."""
    if source != "-":
        with open(source, "rb") as file:
            yield file
        return
    with tempfile.TemporaryFile() as file:
        for chunk in iter(lambda: sys.stdin.buffer.read(1 << 20), b""):
            file.write(chunk)
        yield file


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


def _parse_time(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time, e.g. 2026-11-22T09:30:00Z") from None


class _Position(click.ParamType):
    """An offset or position, as the vault prints it or with thousands separators (852,713)."""

    name = "offset"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().replace(",", "").replace("_", "")
        if not text.isdigit():
            self.fail(
                f"{value!r} is not an offset: give a whole number of 0 or more, like 852713", param, ctx
            )
        return int(text)


@main.command()
@_stream_to_read
@click.option(
    "--from",
    "start",
    metavar="OFFSET",
    type=_Position(),
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
    url: str | None,
    key: str | None,
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
    if group is not None and _one_place(target, url)[1]:
        raise click.UsageError("--group keeps the group's checkpoint in the store: give --store, not --url")
    reader = _reader(stream, target, container, url, key)
    position = reader.seek_time(from_time) if from_time is not None else start or 0
    if group is None:
        if exclusive:
            raise click.UsageError("--exclusive claims the stream for a consumer group: give --group too")
        _print_batches(reader.batches(position, follow=follow, poll_interval=poll), limit, as_json)
        return
    assert target is not None
    with _store(target, container).checkpoints(group) as checkpoints:
        saved = checkpoints.get(stream)
        if saved is not None and (start is not None or from_time is not None):
            given = "--from" if start is not None else "--from-time"
            raise click.UsageError(
                f"consumer group {group!r} reads {stream} on from its checkpoint, position {saved.position}, "
                f"so {given} cannot say where to start: leave out {given}, or read as a new group "
                f"({given} says where a new group starts)"
            )
        consumer = Consumer(reader, checkpoints, start=position, exclusive=exclusive)  # start: a new group's
        _print_batches(consumer.batches(follow=follow, poll_interval=poll), limit, as_json, consumer)


@main.command()
@click.argument("group", required=False)
@_store_option()
@_container_option
@_url_option
@_key_option
@_json_option
def groups(
    group: str | None, target: str | None, container: str, url: str | None, key: str | None, as_json: bool
) -> None:
    """How far behind each consumer group is (or only GROUP), per stream it reads: its checkpoint,
    the stream's position, the lag in bytes, and how long ago the first message it has not read
    was appended."""
    from .checkpoints import check_group_name
    from .consumer import GroupLag
    from .consumer import groups as group_lags

    if group is not None:
        check_group_name(group)
    target, url = _one_place(target, url)
    if url:
        with _client(url, key) as client:
            listed = client.groups()
        where = _api_base(url)
        lags = [
            GroupLag(lag.group, lag.stream, lag.checkpoint, lag.position, lag.lag_bytes, lag.oldest_unread)
            for lag in listed
            if group is None or lag.group == group
        ]
    else:
        store = _existing_store(target, container)
        where = str(store)
        lags = group_lags(store, group)
    if group is not None and not lags:
        raise click.ClickException(
            f"consumer group {group!r} has no checkpoint in {where}; `vault groups` lists the groups there"
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
        click.echo(f"no consumer groups in {where}", err=True)
        return
    from rich.console import Console
    from rich.filesize import decimal
    from rich.table import Table

    table = Table("group", "stream", "checkpoint", "position", "lag", "behind", box=None, header_style="bold")
    for lag in lags:
        table.add_row(
            lag.group,
            lag.stream,
            str(lag.checkpoint),
            str(lag.position),
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
    stream: str,
    target: str | None,
    container: str,
    url: str | None,
    key: str | None,
    poll: float,
    as_json: bool,
) -> None:
    """Print messages as they are appended to STREAM, from now on, until Ctrl-C. A stream that
    does not exist yet is waited for."""
    reader = _reader(stream, target, container, url, key, wait_for_it=True)
    position = reader.position()
    click.echo(f"following {stream} from position {position} (Ctrl-C to stop)", err=True)
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
def verify(
    stream: str, target: str | None, container: str, url: str | None, key: str | None, as_json: bool
) -> None:
    """Read every record of STREAM and check every checksum and offset. Exits 1 and reports the
    position of the first damage if there is any."""
    reader = _reader(stream, target, container, url, key)
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
        f"position {report.position}; "
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
@_url_option
@_key_option
@_json_option
def mirror(
    stream: str,
    path: str,
    target: str | None,
    container: str,
    url: str | None,
    key: str | None,
    as_json: bool,
) -> None:
    """Copy STREAM into a local store at PATH, byte for byte, checking every batch; run again to
    copy only what is new. Read the copy at disk speed with `vault read STREAM --store PATH`."""
    from .local_copy import mirror as mirror_stream

    if target and not url and os.path.realpath(target) == os.path.realpath(path):
        raise click.UsageError(f"--to {path} is the store the stream is read from: copy it to another folder")
    reader = _reader(stream, target, container, url, key)
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
        f"{stream}: copy in {result.path} is at position {result.position} "
        + (f"({copied:,} bytes copied from position {result.start})" if copied else "(it was up to date)"),
    )


@main.command()
@click.argument("stream")
@_store_option()
@_container_option
@click.option(
    "--confirm",
    metavar="STREAM",
    help="The stream's name again, to delete it without a prompt (in scripts).",
)
def delete(stream: str, target: str | None, container: str, confirm: str | None) -> None:
    """Delete STREAM for good: its log and every consumer group's checkpoint on it. Asks for the
    stream's name first (or takes it from --confirm); refused while a writer holds the stream."""
    fmt.check_stream_name(stream)
    store = _existing_store(target, container)
    if not store.has_stream(stream):
        raise click.ClickException(f"stream {stream!r} does not exist in {store}; nothing was deleted")
    status = store.reader(stream).status()
    if confirm is None:
        if not sys.stdin.isatty():
            raise click.UsageError(f"deleting a stream is for good: give --confirm {stream} to delete it")
        click.echo(
            f"This deletes stream {stream} in {store} for good: position {status.position}, last append "
            f"{iso_time(status.last_append) if status.last_append else '-'}, and every consumer group's "
            "checkpoint on it.",
            err=True,
        )
        confirm = click.prompt(
            "Type the stream's name to delete it", err=True, default="", show_default=False
        )
    if confirm != stream:
        raise click.ClickException(f"{confirm!r} is not {stream!r}: nothing was deleted")
    store.delete_stream(stream)
    click.echo(f"deleted stream {stream} (it was at position {status.position})")


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
    shown = target if "://" not in str(store) else "$VAULT_STORE"  # a connection string is not shown
    click.echo(
        "\nwhat to try next:\n"
        f"  .venv/bin/vault read {stream} --store {shown}        # the stream, in the terminal\n"
        f"  .venv/bin/vault serve --store {shown}                # the HTTP API, and the console at "
        "http://127.0.0.1:7071/\n"
        "  README.md: the vault command, the library, the HTTP API and the Function App"
    )


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
    "--without-key",
    is_flag=True,
    help="Serve on an address other than loopback with no API key: anyone who can reach it can "
    "publish and read. Refused without this flag.",
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
    without_key: bool,
    max_bodies_mib: int,
) -> None:
    """Serve the HTTP API on this machine, with one in-process writer per stream. Each request is
    logged on stderr in one line (never its query string, which may hold a key)."""
    import ipaddress
    import socket

    import uvicorn

    from .server import create_app

    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not api_key and not without_key:
        raise click.UsageError(
            f"--host {host} without an API key would let anyone who can reach this machine publish: "
            "give --api-key (or VAULT_API_KEY), or --without-key if that is what you want"
        )
    if api_key and without_key:
        raise click.UsageError("--api-key and --without-key contradict: give one of them")

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
    if not loopback and not api_key:
        click.echo(f"no API key: anyone who can reach {host}:{port} can publish and read", err=True)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    served = logging.getLogger("vault.serve")
    served.addHandler(handler)
    served.setLevel(logging.INFO)
    served.propagate = False
    uvicorn.run(app, host=host, port=port, log_level="warning")


if __name__ == "__main__":
    main()
