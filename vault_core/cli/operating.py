"""The commands an operator looks after a store with: `vault streams`, `groups`, `trim` and
`delete`."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

import click

from .. import format as fmt
from ..lines import iso_time
from .shared import (
    api_base,
    client_for,
    container_option,
    existing_store,
    json_option,
    key_option,
    one_place,
    store_option,
    url_option,
)


@click.command()
@store_option()
@container_option
@url_option
@key_option
@json_option
def streams(target: str | None, container: str, url: str | None, key: str | None, as_json: bool) -> None:
    """List every stream with its position, size on storage and last append time (through the
    HTTP API, with --url: its position and last append time)."""
    target, url = one_place(target, url)
    if url:
        with client_for(url, key) as client:
            listed = client.streams()
        where = api_base(url)
        statuses: list[Any] = [(s.stream, s.position, None, s.last_append) for s in listed]
    else:
        store = existing_store(target, container)
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


@click.command()
@click.argument("group", required=False)
@store_option()
@container_option
@url_option
@key_option
@json_option
def groups(
    group: str | None, target: str | None, container: str, url: str | None, key: str | None, as_json: bool
) -> None:
    """How far behind each consumer group is (or only GROUP), per stream it reads: its checkpoint,
    the stream's position, the lag in bytes, and how long ago the first message it has not read
    was appended."""
    from ..checkpoints import check_group_name
    from ..consumer import GroupLag, group_lags

    if group is not None:
        check_group_name(group)
    target, url = one_place(target, url)
    if url:
        with client_for(url, key) as client:
            listed = client.groups()
        where = api_base(url)
        lags = [
            GroupLag(
                lag.group,
                lag.stream,
                lag.checkpoint,
                lag.position,
                lag.lag_bytes,
                lag.oldest_unread,
                lag.trimmed_bytes,
            )
            for lag in listed
            if group is None or lag.group == group
        ]
    else:
        store = existing_store(target, container)
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
                        "trimmed_bytes": lag.trimmed_bytes,
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

    trimmed = any(lag.trimmed_bytes for lag in lags)
    columns = ["group", "stream", "checkpoint", "position", "lag", "behind"] + (
        ["lost to trimming"] if trimmed else []
    )
    table = Table(*columns, box=None, header_style="bold")
    for lag in lags:
        table.add_row(
            lag.group,
            lag.stream,
            str(lag.checkpoint),
            str(lag.position),
            decimal(lag.lag_bytes),
            _span(lag.behind(now)),
            *([decimal(lag.trimmed_bytes) if lag.trimmed_bytes else ""] if trimmed else []),
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


@click.command()
@click.argument("stream")
@store_option()
@container_option
@click.option(
    "--confirm",
    metavar="STREAM",
    help="The stream's name again, to delete it without a prompt (in scripts).",
)
def delete(stream: str, target: str | None, container: str, confirm: str | None) -> None:
    """Delete STREAM for good: its log and every consumer group's checkpoint on it. Asks for the
    stream's name first (or takes it from --confirm); refused while a writer holds the stream."""
    fmt.check_stream_name(stream)
    store = existing_store(target, container)
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


@click.command()
@click.argument("stream")
@store_option()
@container_option
@click.option(
    "--before", type=click.IntRange(0), help="Remove the sealed segments wholly below this position."
)
@click.option("--keep-bytes", type=click.IntRange(0), help="Keep at least the stream's last N bytes.")
@click.option(
    "--keep-days", type=click.FloatRange(0), help="Keep at least what was appended in the last N days."
)
@click.option(
    "--confirm",
    metavar="STREAM",
    help="The stream's name again, to trim it without a prompt (in scripts).",
)
def trim(
    stream: str,
    target: str | None,
    container: str,
    before: int | None,
    keep_bytes: int | None,
    keep_days: float | None,
    confirm: str | None,
) -> None:
    """Remove STREAM's old data for good, whole sealed segments at a time, keeping what --before,
    --keep-bytes or --keep-days asks to keep (and always the newest segment): for every reader,
    and every consumer group behind resumes at the new start. Shows where the stream starts now
    and what it would start at; asks for the stream's name (or takes it from --confirm). Safe
    while the stream's writer appends."""
    from datetime import timedelta

    fmt.check_stream_name(stream)
    given = [
        name
        for name, value in (("--before", before), ("--keep-bytes", keep_bytes), ("--keep-days", keep_days))
        if value is not None
    ]
    if len(given) > 1:
        raise click.UsageError(f"{' and '.join(given)} contradict: give one of them")
    store = existing_store(target, container)
    if not store.has_stream(stream):
        raise click.ClickException(f"stream {stream!r} does not exist in {store}; nothing was trimmed")
    reader = store.reader(stream)
    position, first = reader.position(), reader.first_position()
    if not given:
        bases = reader.segment_bases()
        click.echo(f"stream {stream} starts at {first} and ends at {position}, in {len(bases)} segment(s)")
        return
    if keep_bytes is not None:
        before = max(0, position - keep_bytes)
    elif keep_days is not None:
        before = reader.seek_time(datetime.now(UTC) - timedelta(days=keep_days))
    assert before is not None
    wholly_below = [base for base in reader.segment_bases()[1:] if base <= before]
    if not wholly_below:
        click.echo(
            f"nothing to trim: no sealed segment of {stream} lies wholly below {before}; it starts at {first}"
        )
        return
    if confirm is None:
        if not sys.stdin.isatty():
            raise click.UsageError(f"trimming removes messages for good: give --confirm {stream} to trim it")
        click.echo(
            f"This removes stream {stream}'s positions {first} to {wholly_below[-1]} for good "
            f"({wholly_below[-1] - first} bytes), for every reader.",
            err=True,
        )
        confirm = click.prompt("Type the stream's name to trim it", err=True, default="", show_default=False)
    if confirm != stream:
        raise click.ClickException(f"{confirm!r} is not {stream!r}: nothing was trimmed")
    now = store.trim(stream, before)
    click.echo(f"trimmed stream {stream}: it starts at {now} (was {first}), and ends at {position}")
