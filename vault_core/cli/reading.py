"""The commands that read a stream: `vault read`, `tail`, `verify` and `mirror`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import click

from .. import Consumer, ReadResult
from ..errors import CorruptDataError, UnknownFormatVersion
from ..lines import to_json, to_text
from .shared import (
    container_option,
    emit,
    json_option,
    key_option,
    many,
    one_place,
    open_target,
    poll_option,
    progress_bar,
    reader_for,
    store_option,
    stream_to_read,
    url_option,
)


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


@click.command()
@stream_to_read
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
@poll_option
@json_option
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
    if group is not None and one_place(target, url)[1]:
        raise click.UsageError("--group keeps the group's checkpoint in the store: give --store, not --url")
    reader = reader_for(stream, target, container, url, key)
    position = reader.seek_time(from_time) if from_time is not None else start or 0
    if group is None:
        if exclusive:
            raise click.UsageError("--exclusive claims the stream for a consumer group: give --group too")
        _print_batches(reader.batches(position, follow=follow, poll_interval=poll), limit, as_json)
        return
    assert target is not None
    with open_target(target, container).checkpoints(group) as checkpoints:
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


@click.command()
@stream_to_read
@poll_option
@json_option
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
    reader = reader_for(stream, target, container, url, key, wait_for_it=True)
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
        with _ctrl_c_ends_it():
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
    finally:
        # Stop the read-ahead thread now, while threads still run: left to the garbage collector,
        # a generator caught in the interrupt's reference cycle is closed at interpreter exit,
        # where joining its (daemon) thread never returns.
        close = getattr(batches, "close", None)
        if close is not None:
            close()


@contextlib.contextmanager
def _ctrl_c_ends_it() -> Iterator[None]:
    """Ctrl-C ends a follow, however it lands. Python raises KeyboardInterrupt wherever the main
    thread is, and one raised inside a weakref or `__del__` callback is printed and dropped: the
    follow would go on for ever. So Ctrl-C also starts a timer that raises it again every half
    second, until the follow has ended."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield  # signals are the main thread's; Windows has no interval timers
        return

    def interrupt(signum: int, frame: Any) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0.5, 0.5)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, interrupt), signal.signal(signal.SIGALRM, interrupt)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGALRM, previous[1])


@click.command()
@stream_to_read
@json_option
def verify(
    stream: str, target: str | None, container: str, url: str | None, key: str | None, as_json: bool
) -> None:
    """Read every record of STREAM and check every checksum and offset. Exits 1 and reports the
    position of the first damage if there is any."""
    reader = reader_for(stream, target, container, url, key)
    try:
        with progress_bar(f"verifying {stream}", reader.position()) as update:
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
    emit(
        as_json,
        {
            "stream": stream,
            "ok": True,
            "position": report.position,
            "batches": report.batches,
            "messages": report.messages,
        },
        f"{stream}: {many(report.batches, 'batch', 'batches')}, {many(report.messages, 'message')}, "
        f"position {report.position}; "
        "every checksum and offset is intact",
    )


@click.command()
@click.argument("stream")
@click.option(
    "--to",
    "path",
    required=True,
    type=click.Path(file_okay=False),
    help="The local directory to keep the copy in (an embedded store).",
)
@store_option()
@container_option
@url_option
@key_option
@json_option
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
    from ..mirroring import mirror as mirror_stream

    if target and not url and os.path.realpath(target) == os.path.realpath(path):
        raise click.UsageError(f"--to {path} is the store the stream is read from: copy it to another folder")
    reader = reader_for(stream, target, container, url, key)
    with progress_bar(f"mirroring {stream}", reader.position()) as update:
        result = mirror_stream(reader, path, progress=update)
    copied = result.position - result.start
    emit(
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
