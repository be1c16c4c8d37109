"""The commands an operator looks after a store with: `vault streams`, `groups`, `trim`,
`retention` and `delete`."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from .. import format as fmt
from ..lines import iso_time
from ..retention import MAX_KEEP_DAYS, Retention
from ..store import Store
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


F = TypeVar("F", bound=Callable[..., Any])


def confirmed(stream: str, confirm: str | None, *, doing: str, warning: str) -> None:
    """Go on only once the user typed the stream's name (or gave it with --confirm): `doing`
    ("delete", "trim") what `warning` says, for good."""
    if confirm is None:
        if not sys.stdin.isatty():
            raise click.UsageError(f"this is for good: give --confirm {stream} to {doing} it")
        click.echo(warning, err=True)
        confirm = click.prompt(
            f"Type the stream's name to {doing} it", err=True, default="", show_default=False
        )
    if confirm != stream:
        raise click.ClickException(f"{confirm!r} is not {stream!r}: nothing was changed")


def confirm_option(doing: str) -> Callable[[F], F]:
    return click.option(
        "--confirm",
        metavar="STREAM",
        help=f"The stream's name again, to {doing} it without a prompt (in scripts).",
    )


@click.command()
@click.argument("stream")
@store_option()
@container_option
@confirm_option("delete")
def delete(stream: str, target: str | None, container: str, confirm: str | None) -> None:
    """Delete STREAM for good: its log and every consumer group's checkpoint on it. Asks for the
    stream's name first (or takes it from --confirm); refused while a writer holds the stream."""
    store = stream_store(stream, target, container)
    status = store.reader(stream).status()
    confirmed(
        stream,
        confirm,
        doing="delete",
        warning=f"This deletes stream {stream} in {store} for good: position {status.position}, last append "
        f"{iso_time(status.last_append) if status.last_append else '-'}, and every consumer group's "
        "checkpoint on it.",
    )
    store.delete_stream(stream)
    click.echo(f"deleted stream {stream} (it was at position {status.position})")


def stream_store(stream: str, target: str | None, container: str) -> Store:
    """The store, which must hold the stream."""
    fmt.check_stream_name(stream)
    store = existing_store(target, container)
    if not store.has_stream(stream):
        raise click.ClickException(f"stream {stream!r} does not exist in {store}; nothing was changed")
    return store


keep_bytes_option = click.option(
    "--keep-bytes", type=click.IntRange(0), help="Keep at least the stream's last N bytes."
)
keep_days_option = click.option(
    "--keep-days",
    type=click.FloatRange(0, MAX_KEEP_DAYS),
    help="Keep at least what was appended in the last N days.",
)


@click.command()
@click.argument("stream")
@store_option()
@container_option
@click.option(
    "--before", type=click.IntRange(0), help="Remove the sealed segments wholly below this position."
)
@keep_bytes_option
@keep_days_option
@confirm_option("trim")
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
    while the stream's writer appends. To trim by a standing rule, see `vault retention`."""
    given = [
        name
        for name, value in (("--before", before), ("--keep-bytes", keep_bytes), ("--keep-days", keep_days))
        if value is not None
    ]
    if len(given) > 1:
        raise click.UsageError(f"{' and '.join(given)} contradict: give one of them")
    store = stream_store(stream, target, container)
    with store.reader(stream) as reader:
        position, bases = reader.position(), reader.segment_bases()
        if not given:
            click.echo(
                f"stream {stream} starts at {bases[0]} and ends at {position}, in {len(bases)} segment(s)"
            )
            return
        if before is None:
            before = Retention(keep_bytes, keep_days).trim_point(stream, reader.log)
    would_start = store.trim(stream, before, dry_run=True)
    if would_start == bases[0]:
        click.echo(
            f"nothing to trim: no sealed segment of {stream} lies wholly below {before}; "
            f"it starts at {bases[0]}"
        )
        return
    confirm_trim(stream, confirm, bases[0], would_start)
    now = store.trim(stream, before)
    click.echo(f"trimmed stream {stream}: it starts at {now} (was {bases[0]}), and ends at {position}")


def confirm_trim(stream: str, confirm: str | None, first: int, would_start: int, why: str = "") -> None:
    confirmed(
        stream,
        confirm,
        doing="trim",
        warning=f"This removes stream {stream}'s positions {first} to {would_start} for good "
        f"({would_start - first} bytes), for every reader{why}.",
    )


@click.command()
@click.argument("stream")
@store_option()
@container_option
@keep_bytes_option
@keep_days_option
@click.option("--keep-everything", is_flag=True, help="Drop the policy: trim nothing from now on.")
@click.option("--apply", "apply_now", is_flag=True, help="Trim now what the stream's policy lets go.")
@confirm_option("trim")
def retention(
    stream: str,
    target: str | None,
    container: str,
    keep_bytes: int | None,
    keep_days: float | None,
    keep_everything: bool,
    apply_now: bool,
    confirm: str | None,
) -> None:
    """Show or set STREAM's retention policy: keep at least its last --keep-bytes bytes and at
    least its last --keep-days days (both hold if both are given; by default a stream keeps
    everything). The stream's writer applies it each time the stream rolls into a new segment;
    setting a policy applies it at once (asking for the stream's name, or taking it from
    --confirm, if that removes anything), and --apply applies the policy set, for a stream that
    rolls seldom. Whole sealed segments go, never the newest: a stream keeps at least what the
    policy says, and up to one segment more."""
    setting = keep_bytes is not None or keep_days is not None
    if keep_everything and setting:
        raise click.UsageError("--keep-everything contradicts --keep-bytes and --keep-days: give one")
    store = stream_store(stream, target, container)
    policy = Retention(keep_bytes, keep_days) if setting or keep_everything else store.retention(stream)
    with store.reader(stream) as reader:
        position, bases = reader.position(), reader.segment_bases()
        before = policy.trim_point(stream, reader.log)
    would_start = store.trim(stream, before, dry_run=True)
    if setting or keep_everything:
        if would_start != bases[0]:
            confirm_trim(
                stream, confirm, bases[0], would_start, f", as the new policy ({policy}) lets them go"
            )
        store.set_retention(stream, policy)
        click.echo(f"stream {stream}: retention set to {policy}")
    elif not apply_now:
        click.echo(
            f"stream {stream}: {policy}; it starts at {bases[0]} and ends at {position}, "
            f"in {len(bases)} segment(s)"
            + (f"; applied now, it would start at {would_start}" if would_start != bases[0] else "")
        )
        return
    if would_start != bases[0]:
        now = store.trim(stream, before)
        click.echo(f"trimmed stream {stream}: it starts at {now} (was {bases[0]}), and ends at {position}")
    elif apply_now:
        click.echo(
            f"nothing to trim: stream {stream}'s policy ({policy}) lets no whole sealed segment go yet"
        )
