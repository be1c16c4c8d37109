"""`vault publish`: an input appended once, a thin shell over vault_core.publish."""

from __future__ import annotations

import signal
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import click

from .. import format as fmt
from .shared import (
    api_base,
    container_option,
    describe,
    emit,
    is_read_url,
    json_option,
    key_option,
    many,
    one_place,
    open_target,
    progress_bar,
    store_option,
    url_option,
)


@click.command()
@click.argument(
    "stream",
)
@click.argument(
    "source",
    default="-",
    metavar="[FILE|-]",
    type=click.Path(exists=True, dir_okay=False, allow_dash=True),
)
@store_option()
@container_option
@url_option
@key_option
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
@json_option
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
    from ..publish import PublishIncomplete, PublishProgress
    from ..publish import publish as publish_input

    fmt.check_stream_name(stream)
    target, url = one_place(target, url)
    if not target and not url:
        raise click.UsageError(
            "say where to publish: --store TARGET (or VAULT_STORE) to append directly, or --url for the "
            "vault's HTTP API"
        )
    if url and is_read_url(url):
        raise click.UsageError(
            "--url is a stream's read URL, which only reads: publish to the vault's HTTP address "
            "(http://HOST:PORT/api) or to --store"
        )
    name = source if source != "-" else "stdin"
    latest = PublishProgress(0, 0, 0)
    stopping = _StopAfterBatch()
    with _spooled(source) as lines, progress_bar(f"publishing to {stream}", 0, unit="messages") as update:

        def seen(progress: PublishProgress) -> None:
            nonlocal latest
            if latest.total == 0 and 0 < progress.held < progress.total:
                already = f"{many(progress.held, 'line')} of {name}"
                click.echo(f"resuming: the first {already} are in {stream} already", err=True)
            latest = progress
            update(progress.held, progress.total)

        try:
            with stopping:
                result = publish_input(
                    stream,
                    lines,
                    name=name,
                    store=open_target(target, container) if target else None,
                    url=api_base(url) if url else None,
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
                f"{describe(cause)}. "
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
        emit(
            as_json,
            fields,
            f"nothing to publish: all {many(result.skipped, 'message')} of {name} are in {stream} already "
            "(use --again to publish them anew)",
        )
        return
    emit(
        as_json,
        fields,
        f"published {many(result.published, 'message')} in {many(result.batches, 'batch', 'batches')} to "
        f"{stream}{' (new stream)' if result.created else ''}: offsets {result.first_offset} to "
        f"{result.last_offset}, stream position now {result.position}"
        + (f" ({many(result.skipped, 'message')} of {name} were there already)" if result.skipped else ""),
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
