"""What every `vault` command shares: the options that say where (--store, --container, --url,
--key), how they resolve, the store, reader or client they open, errors as one line, and output."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import click

from .. import StreamReader, open_reader, open_store
from .. import format as fmt
from ..errors import StreamBusyError, VaultError, connection_reason
from ..framing import LogFrames
from ..sources import open_source
from ..store import Store


class VaultGroup(click.Group):
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
            raise click.ClickException(describe(error)) from None


def describe(error: Exception) -> str:
    """An error as one line for people, with what to do next."""
    from ..client import Unauthorized

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
        if where:
            why = connection_reason(error) or error
            return (
                f"cannot reach the vault's HTTP API at {where[1]}:{where[2]} ({why}): is it running "
                "there (vault serve, func start)? Check --url"
            )
        return f"cannot reach the vault's HTTP API: {error}"
    return f"{type(error).__name__}: {error}"


def store_option(default: str | None = None) -> Any:
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


container_option = click.option(
    "--container",
    default="vault",
    show_default=True,
    envvar="VAULT_CONTAINER",
    help="Blob container of the streams, on Azure Storage. Env: VAULT_CONTAINER.",
)
url_option = click.option(
    "--url",
    metavar="URL",
    help="The vault's HTTP address (http://HOST:PORT/api) instead of --store; for the reading "
    "commands also a stream's read URL (GET /api/streams/STREAM gives one).",
)
key_option = click.option(
    "--key",
    envvar="VAULT_API_KEY",
    help="The HTTP API's key (x-functions-key), with --url. Env: VAULT_API_KEY.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Output JSON lines.")
poll_option = click.option(
    "--poll", default=1.0, show_default=True, type=click.FloatRange(0.05), help="Seconds between polls."
)


def stream_to_read(command: Any) -> Any:
    """STREAM, and where to read it: --store and --container, or --url (and --key)."""
    for option in reversed(
        (click.argument("stream"), store_option(), container_option, url_option, key_option)
    ):
        command = option(command)
    return command


def one_place(target: str | None, url: str | None) -> tuple[str | None, str | None]:
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


def is_read_url(url: str) -> bool:
    """A stream's read URL (a file:// URL, a blob URL with or without its SAS) rather than the
    vault's HTTP address."""
    parts = urlsplit(url)
    if parts.scheme.lower() == "file" or "sig=" in parts.query:
        return True
    return parts.path.endswith("/log") and "/api/" not in parts.path + "/"


def api_base(url: str) -> str:
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


def open_target(target: str | None, container: str) -> Store:
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
            store = open_store(target, container=container, credential=azure_login())
        else:
            store = open_store(target, container=container)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--store / VAULT_STORE") from None
    if "://" in str(store):  # on Azure Storage
        store.exists()
    return store


def azure_login() -> Any:
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


def client_for(url: str, key: str | None) -> Any:
    from ..client import VaultClient

    return VaultClient(api_base(url), key=key)


def existing_store(target: str | None, container: str) -> Store:
    """The store, which must exist: a mistyped --store is an error, not an empty store."""
    store = open_target(target, container)
    if not store.exists():
        raise click.ClickException(
            f"no store at {store}: check --store (a directory, a connection string or an account URL)"
            + ("" if "://" not in str(store) else " and --container")
        )
    return store


def reader_for(
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
    target, url = one_place(target, url)
    if url and is_read_url(url):
        signed = "sig=" in url or not url.lower().startswith(("https://", "http://"))
        named, source = open_source(url, credential=None if signed else azure_login())
        if named != stream:
            raise click.UsageError(f"--url is the read URL of stream {named!r}, not of {stream!r}")
        exists = LogFrames(stream, source).exists()
        if not exists and wait_for_it:
            click.echo(missing, err=True)
        elif not exists:
            where = url.split("?", 1)[0]  # not the SAS
            raise click.ClickException(
                f"no stream at {where}: check the URL (GET /api/streams/{stream} gives a fresh one)"
            )
        return StreamReader(stream, source)
    if url:
        from ..client import NotFound

        said = False
        while True:
            try:
                return open_reader(f"{api_base(url)}/streams/{stream}", key=key)
            except NotFound:
                if not wait_for_it:
                    break
                if not said:
                    click.echo(missing, err=True)
                    said = True
                time.sleep(1.0)
        raise click.ClickException(
            f"stream {stream!r} does not exist at {api_base(url)}; `vault streams --url {url}` lists "
            "the streams there"
        )
    if not target:
        raise click.UsageError(
            "say where the stream is: --store TARGET (or VAULT_STORE), or --url with the vault's HTTP "
            "address or the stream's read URL"
        )
    store = existing_store(target, container)
    if not store.has_stream(stream):
        if not wait_for_it:
            raise click.ClickException(
                f"stream {stream!r} does not exist in {store}; `vault streams` lists the streams there"
            )
        click.echo(missing, err=True)
    return store.reader(stream)


@contextmanager
def progress_bar(description: str, total: int, *, unit: str = "bytes") -> Iterator[Any]:
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


def many(count: int, noun: str, plural: str = "") -> str:
    return f"{count:,} {noun if count == 1 else plural or noun + 's'}"


def emit(as_json: bool, fields: dict[str, Any], text: str) -> None:
    click.echo(json.dumps(fields) if as_json else text)
