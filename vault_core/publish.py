"""Publishing an input (a JSON-lines file, stdin, a list of messages) so that each of its messages
is in the stream once, however often it is run, interrupted or resumed.

What is in the stream already is recognised by content. Batch k of a publish, which ends at the
input's n-th message, carries the id `pub-<lineage>-<n>-<chain>`: `chain` is a hash of the input's
first n messages and `lineage` one of its first message alone. So the id of the batch that ends
at message n depends only on those n messages, never on the batch size or on how the input was
read, and whatever the last publish of the same content was, its batch ids name exactly the
prefix it holds. A run looks for those ids among the batches the stream remembers (its last
1,024) and in a progress record of its own (kept every PROGRESS_EVERY batches, for when more than
1,024 other batches were appended since); it checks every claim against the stream itself, and
publishes only the messages after the longest prefix that is in. An input whose published part
has changed since is refused (PublishRefused), naming the first line that differs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import IO, Any, NamedTuple

from . import format as fmt
from .errors import CorruptDataError, VaultError, check_int
from .framing import LogFrames
from .lines import BadLine, message_json, parse_line
from .reader import StreamReader
from .store import Store

# A publish sends at most this many key and value bytes per batch (the HTTP API takes 16 MiB).
PUBLISH_BATCH_BYTES = 8 * 1024 * 1024
# A publish records its progress this often (in batches), and when it stops.
PROGRESS_EVERY = 100
# A progress record keeps at most this many points: past it, every other older one goes.
MAX_POINTS = 256
# Bytes of the hashes that go in a batch id: 96 bits of chain, 32 of lineage.
CHAIN_HEX, LINEAGE_HEX = 24, 8
_OUR_ID = re.compile(rf"pub-([0-9a-f]{{{LINEAGE_HEX}}})-([0-9]+)-([0-9a-f]{{{CHAIN_HEX}}})")
_SIZES = struct.Struct("<IQ")

Source = str | os.PathLike[str] | IO[bytes] | Iterable[fmt.Message]


class BadInput(VaultError, ValueError):
    """A line of the input is not a message; nothing was published."""


class PublishRefused(VaultError):
    """The input's published part has changed since it was published; nothing was published.
    `line` is the first line (1-based, counting messages) that differs."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


class PublishIncomplete(VaultError):
    """The publish failed part way (the cause is chained): the input's first `held` messages are
    in the stream, and `in_flight` after them may be. The same publish run again appends the rest,
    each message once."""

    def __init__(self, message: str, held: int, in_flight: int) -> None:
        super().__init__(message)
        self.held = held
        self.in_flight = in_flight


class PublishProgress(NamedTuple):
    held: int  # messages of the input in the stream, for certain
    sending: int  # messages of the batch in flight (0 between batches)
    total: int  # messages in the input


@dataclass(frozen=True)
class PublishResult:
    stream: str
    total: int  # messages in the input
    skipped: int  # of them, in the stream already before this run
    published: int  # appended by this run
    batches: int  # batches appended by this run
    first_offset: int | None  # of the first message this run appended
    last_offset: int | None
    position: int | None  # the stream's committed position after this run's last batch
    created: bool  # this run created the stream
    complete: bool  # False when `should_stop` ended the run early

    @property
    def held(self) -> int:
        """Messages of the input in the stream now."""
        return self.skipped + self.published


def publish(
    stream: str,
    source: Source,
    *,
    store: Store | None = None,
    url: str | None = None,
    key: str | None = None,
    batch_size: int = 1000,
    again: bool = False,
    progress: Callable[[PublishProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    name: str | None = None,
) -> PublishResult:
    """Append the messages of `source` to `stream`, each once: what an earlier publish of the same
    content (or of its beginning) put in the stream is recognised and not appended again.

    `source`: a JSON-lines file (a path, or a binary file that can be rewound), one message per
    line as `vault publish` takes them, or an iterable of Messages. The whole input is checked
    before anything is appended: BadInput, and nothing changes. Where to: a `store` (appending
    through its writer, which must be free) or the HTTP API at `url` (with the API `key`).
    Batches hold `batch_size` messages and at most 8 MiB. `again`: publish the input anew, as new
    messages. `progress` is called before each batch is sent and after it is committed;
    `should_stop`, checked between batches, ends the run early (the result says how far it got).
    The progress record lives beside the stream on a store, and in `state_dir` (default
    $XDG_STATE_HOME/message-vault, ~/.local/state/message-vault) for the HTTP API. `name`: what
    messages call the input (default: its path).

    PublishRefused if the part of the input that was published has changed since (use `again`);
    PublishIncomplete if an append fails part way."""
    fmt.check_stream_name(stream)
    if (store is None) == (url is None):
        raise ValueError("publish to a store or to an HTTP API url: give exactly one")
    if not 1 <= check_int("batch_size", batch_size) <= fmt.MAX_BATCH_MESSAGES:
        raise ValueError(f"batch_size must be 1 to {fmt.MAX_BATCH_MESSAGES}, got {batch_size!r}")
    with _Input.of(source, name) as input_:
        salt = os.urandom(16).hex() if again else ""
        lineage = input_.lineage(salt)
        destination = _Destination.to(stream, store, url, key, lineage, state_dir)
        try:
            reader = None if again else destination.reader()
            recorded = destination.known()  # read once: for recognising, then for recording
            known = [] if reader is None else recorded
            with contextlib.closing(reader) if reader else contextlib.nullcontext():
                total, claims = _scan(input_, salt, lineage, reader, known)
                already = (
                    _Resume()
                    if reader is None
                    else _already_in(stream, reader, input_, lineage, claims, known)
                )
            return _append(
                stream,
                input_,
                salt,
                lineage,
                total,
                batch_size,
                already,
                destination,
                recorded,
                progress,
                should_stop,
            )
        finally:
            destination.close()


class _Input:
    """The input, which can be read again from its start or from a resume point: the messages,
    each with the resume point after it (a byte offset in a file, an index in a list)."""

    def __init__(
        self, name: str, messages: Callable[[int], Iterator[tuple[fmt.Message, int]]], file: IO[bytes] | None
    ) -> None:
        self.name = name
        self._messages = messages
        self._file = file

    @classmethod
    def of(cls, source: Source, name: str | None) -> _Input:
        if isinstance(source, str | os.PathLike):
            file = open(source, "rb")  # noqa: SIM115 - closed by __exit__
            return cls(name or os.fspath(source), lambda start: _lines_of(file, start), file)
        if hasattr(source, "read") and hasattr(source, "seek"):
            lines: IO[bytes] = source  # type: ignore[assignment]
            named = name or str(getattr(lines, "name", "the input"))
            return cls(named, lambda start: _lines_of(lines, start), None)
        if isinstance(source, Iterable):
            messages = [_as_message(m, n) for n, m in enumerate(source, 1)]
            return cls(name or "the messages", lambda start: _items_of(messages, start), None)
        raise TypeError(f"source must be a path, a binary file or messages, got {type(source).__name__}")

    def messages(self, start: int = 0) -> Iterator[tuple[fmt.Message, int]]:
        """The messages from resume point `start`; BadInput at a line that is no message."""
        try:
            yield from self._messages(start)
        except BadLine as error:
            raise BadInput(f"{self.name}, {error}; nothing was published") from None

    def lineage(self, salt: str) -> str:
        """What names the input: the hash of its first message (BadInput if there is none)."""
        for message, _ in self.messages():
            return _extend(hashlib.sha256(salt.encode()), message)[:LINEAGE_HEX]
        raise BadInput(f"no messages in {self.name}: nothing to publish")

    def __enter__(self) -> _Input:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()


def _lines_of(file: IO[bytes], start: int) -> Iterator[tuple[fmt.Message, int]]:
    file.seek(start)
    at = start
    for number, line in enumerate(file, 1):  # numbered from the start of the file (start 0)
        at += len(line)
        message = parse_line(line, number)
        if message is not None:
            yield message, at


def _items_of(messages: list[fmt.Message], start: int) -> Iterator[tuple[fmt.Message, int]]:
    for index in range(start, len(messages)):
        yield messages[index], index + 1


def _as_message(message: object, number: int) -> fmt.Message:
    if isinstance(message, fmt.Message):
        return message
    if isinstance(message, tuple) and len(message) == 2:
        return fmt.Message(*message)
    raise TypeError(f"message {number} must be a Message (key, value), got {type(message).__name__}")


def _extend(running: Any, message: fmt.Message) -> str:
    """Add a message to the running hash of the input; the chain up to it, as batch ids carry it."""
    encoded = message.key.encode()
    running.update(_SIZES.pack(len(encoded), len(message.value)))
    running.update(encoded)
    running.update(message.value)
    return str(running.copy().hexdigest()[:CHAIN_HEX])


def batch_id(lineage: str, count: int, chain: str) -> str:
    """The id of the batch that ends at the input's `count`-th message."""
    return f"pub-{lineage}-{count}-{chain}"


class _Point(NamedTuple):
    upto: int  # the batch ends at the input's upto-th message
    chain: str
    position: int  # where the batch starts in the stream


@dataclass
class _Resume:
    """Where a publish goes on from: after the input's first `done` messages, held by the batch
    `since`; with the running hash and the input's resume point there when the scan kept them."""

    done: int = 0
    since: _Point | None = None
    running: Any = None
    at: int = 0


def _scan(
    input_: _Input, salt: str, lineage: str, reader: StreamReader | None, known: list[_Point]
) -> tuple[int, list[_Resume]]:
    """Check every message of the input (BadInput at the first that is wrong) and count them; and
    where the stream is there to look in, collect the claims that a prefix of the input is in it:
    a batch id the stream remembers, a point of the progress record whose chain matches."""
    remembered = {} if reader is None else dict(fmt.ring_entries(reader.commit_record().ring))
    recorded = {point.upto: point for point in known}
    running = hashlib.sha256(salt.encode())
    claims: list[_Resume] = []
    count = 0
    for count, (message, at) in enumerate(input_.messages(), 1):
        if reader is None:
            continue  # a new stream: nothing to recognise
        chain = _extend(running, message)
        start = remembered.get(fmt.batch_id_hash(batch_id(lineage, count, chain).encode()))
        point = recorded.get(count)
        if start is None and point is not None and point.chain == chain:
            start = point.position
        if start is not None:
            claims.append(_Resume(count, _Point(count, chain, start), running.copy(), at))
    return count, claims


def _already_in(
    stream: str,
    reader: StreamReader,
    input_: _Input,
    lineage: str,
    claims: list[_Resume],
    known: list[_Point],
) -> _Resume:
    """The longest prefix of the input that is in the stream. A claim counts only if the stream
    holds, where it says, a batch with exactly that id; if the progress record knows of more of
    this lineage than that, what was published after it is compared with the input."""
    end = reader.position()
    found = next(
        (c for c in reversed(claims) if c.since and _holds(reader, lineage, c.since, end)), _Resume()
    )
    beyond = [point for point in known if point.upto > found.done]
    if beyond and (found.since is not None or _holds(reader, lineage, known[0], end)):
        start = known[0].position if found.since is None else found.since.position
        until = min(end, max(point.position for point in beyond) + 1)
        done, since = _compare(stream, reader, input_, lineage, (found.done, found.since), start, until)
        if done != found.done:
            return _Resume(done, since)  # the running hash there is worked out again
    return found


def _holds(reader: StreamReader, lineage: str, point: _Point, end: int) -> bool:
    if not 0 <= point.position < end:
        return False
    try:
        _, header = LogFrames(reader.stream, reader.log).batch(point.position)
    except CorruptDataError:
        return False
    return header.batch_id == batch_id(lineage, point.upto, point.chain).encode()


def _compare(
    stream: str,
    reader: StreamReader,
    input_: _Input,
    lineage: str,
    already: tuple[int, _Point | None],
    start: int,
    until: int,
) -> tuple[int, _Point | None]:
    """Walk the batches of this lineage that start from `start` to `until`, comparing their
    messages with the input after its first `done`: PublishRefused at the first that differs;
    else how far they agree."""
    done, since = already
    expected = (message for message, _ in islice(input_.messages(), done, None))
    for header, messages in reader.headed_batches(start):
        if header.position >= until:
            break
        ours = _OUR_ID.fullmatch(header.batch_id.decode("ascii", "replace"))
        if not ours or ours[1] != lineage:
            continue
        count = int(ours[2])
        first = count - len(messages) + 1
        if count <= done:
            continue
        if first != done + 1:  # not the continuation of what agrees so far: the record is stale
            break
        for number, stored in enumerate(messages, first):
            line = next(expected, None)
            if line is None:  # the input ends inside what was published: all of it is in
                return number - 1, since
            if (stored.key, stored.value) != tuple(line):
                raise PublishRefused(
                    f"{input_.name} has changed since it was published to {stream}: message {number:,} "
                    f"is {_shown(line)}, but was published as {_shown(stored)} (offset {stored.offset}). "
                    f"Its first {number - 1:,} messages are in {stream}; to publish the whole input anew, "
                    "as new messages, use --again",
                    number,
                )
        done, since = count, _Point(count, ours[3], header.position)
    return done, since


def _shown(message: fmt.Message | fmt.StoredMessage) -> str:
    """A message as a short line of JSON, for an error."""
    text = json.dumps(message_json(message.key, message.value), ensure_ascii=False)
    return text if len(text) <= 120 else text[:117] + "..."


def _append(
    stream: str,
    input_: _Input,
    salt: str,
    lineage: str,
    total: int,
    batch_size: int,
    already: _Resume,
    destination: _Destination,
    points: list[_Point],
    progress: Callable[[PublishProgress], None] | None,
    should_stop: Callable[[], bool] | None,
) -> PublishResult:
    """Append the input after its first `already.done` messages, recording progress as it goes
    (`points`: the progress record as read at the start)."""
    done, since = already.done, already.since
    report = progress or (lambda _: None)
    first = last = position = None
    held, batches, sending = done, 0, 0
    report(PublishProgress(held, 0, total))
    try:
        for batch, chain in _batches(_chained(input_, salt, already), batch_size):
            if should_stop is not None and should_stop():
                break
            sending = len(batch)
            report(PublishProgress(held, sending, total))
            count = held + len(batch)
            id_ = batch_id(lineage, count, chain)
            result = destination.append(batch, id_)
            first = result.offsets[0] if first is None else first
            last, position = result.offsets[-1], result.position
            # The batch's header and id come before its first message.
            since = _Point(count, chain, result.offsets[0] - fmt.BATCH_HEADER.size - len(id_))
            held, batches, sending = count, batches + 1, 0
            report(PublishProgress(held, 0, total))
            if batches % PROGRESS_EVERY == 0 or not points:  # the first point: where the lineage starts
                points = destination.remember(points, since, input_.name)
    except Exception as error:
        with contextlib.suppress(Exception):
            if since is not None:
                destination.remember(points, since, input_.name)
        raise PublishIncomplete(
            f"publishing {input_.name} to {stream} failed after {held:,} of its {total:,} messages: {error}",
            held,
            sending,
        ) from error
    except BaseException:  # KeyboardInterrupt: what is known to be in is recorded
        with contextlib.suppress(Exception):
            if since is not None:
                destination.remember(points, since, input_.name)
        raise
    if since is not None and batches:
        destination.remember(points, since, input_.name)
    return PublishResult(
        stream, total, done, held - done, batches, first, last, position, destination.created, held == total
    )


def _chained(input_: _Input, salt: str, already: _Resume) -> Iterator[tuple[fmt.Message, str]]:
    """The messages after the first `already.done`, each with the chain up to it: from the resume
    point the scan kept, or worked out again from the start."""
    if already.running is not None:
        running, messages = already.running, input_.messages(already.at)
    else:
        running, messages = hashlib.sha256(salt.encode()), input_.messages()
        for message, _ in islice(messages, already.done):
            _extend(running, message)
    for message, _ in messages:
        yield message, _extend(running, message)


def _batches(
    chained: Iterator[tuple[fmt.Message, str]], size: int
) -> Iterator[tuple[list[fmt.Message], str]]:
    """The messages in batches of `size` and at most PUBLISH_BATCH_BYTES, each with the chain of
    its last message."""
    batch: list[fmt.Message] = []
    held, chain = 0, ""
    for message, next_chain in chained:
        weight = len(message.key.encode()) + len(message.value)
        if batch and (len(batch) == size or held + weight > PUBLISH_BATCH_BYTES):
            yield batch, chain
            batch, held = [], 0
        batch.append(message)
        held += weight
        chain = next_chain
    if batch:
        yield batch, chain


class _Destination:
    """Where a publish goes, the store's writer or the HTTP API; the stream as it stands there; and
    the progress record of one lineage: beside the stream on a store, in the user's state folder
    for the HTTP API (whose caller may hold no right to write beside the stream)."""

    def __init__(self, stream: str, lineage: str) -> None:
        self.stream = stream
        self.lineage = lineage
        self.created = False

    @staticmethod
    def to(
        stream: str,
        store: Store | None,
        url: str | None,
        key: str | None,
        lineage: str,
        state_dir: str | os.PathLike[str] | None,
    ) -> _Destination:
        if store is not None:
            return _ToStore(stream, lineage, store)
        assert url is not None
        return _ToApi(stream, lineage, url, key, state_dir)

    def reader(self) -> StreamReader | None:
        """The stream's reader; None if there is no such stream (yet)."""
        raise NotImplementedError

    def append(self, batch: list[fmt.Message], batch_id: str) -> Any:
        raise NotImplementedError

    def _load(self) -> bytes:
        raise NotImplementedError

    def _save(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the destination holds."""

    def known(self) -> list[_Point]:
        """The points of the progress record, oldest first (none if it is missing or unreadable)."""
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError, VaultError):
            record = json.loads(self._load())
            return [
                _Point(int(count), str(chain), int(position)) for count, chain, position in record["points"]
            ]
        return []

    def remember(self, points: list[_Point], point: _Point, name: str) -> list[_Point]:
        """Add `point` (a batch just committed) to the record, thinned to MAX_POINTS: the first
        point stays (where the lineage starts), and the newest."""
        points = [p for p in points if p.upto < point.upto] + [point]
        if len(points) > MAX_POINTS:
            points = [points[0], *points[1:-1][1::2], points[-1]]
        self._save(json.dumps({"source": name, "points": [list(p) for p in points]}).encode())
        return points


class _ToStore(_Destination):
    def __init__(self, stream: str, lineage: str, store: Store) -> None:
        super().__init__(stream, lineage)
        self._store = store
        self._writer: Any = None
        self.created = not store.has_stream(stream)
        self._record = f"_publish/{stream}/{lineage}.json"

    def reader(self) -> StreamReader | None:
        return None if self.created else self._store.reader(self.stream)

    def append(self, batch: list[fmt.Message], batch_id: str) -> Any:
        from azure.core.exceptions import AzureError
        from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

        if self._writer is None:
            self._writer = self._store.writer(self.stream)
        # A failed append may have landed; retried with its batch id, it is appended once either way.
        retrying = Retrying(
            retry=retry_if_exception_type((AzureError, ConnectionError, TimeoutError)),
            stop=stop_after_attempt(4),
            wait=wait_exponential(multiplier=0.5, max=8),
            reraise=True,
        )
        return retrying(self._writer.append, batch, batch_id=batch_id)

    def _load(self) -> bytes:
        return self._store.read_file(self._record)

    def _save(self, data: bytes) -> None:
        self._store.write_file(self._record, data)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class _ToApi(_Destination):
    def __init__(
        self, stream: str, lineage: str, url: str, key: str | None, state_dir: str | os.PathLike[str] | None
    ) -> None:
        from .client import NotFound, VaultClient

        super().__init__(stream, lineage)
        self._client = VaultClient(url, key=key)
        try:
            self._read_url: str | None = self._client.stream_info(stream).read_url
        except NotFound:
            self._read_url = None
        except BaseException:
            self._client.close()
            raise
        self.created = self._read_url is None
        state = Path(state_dir) if state_dir else _state_home() / "message-vault"
        where = hashlib.sha256(f"{url.rstrip('/')}\0{stream}\0{lineage}".encode()).hexdigest()[:32]
        self._record = state / "publish" / f"{where}.json"

    def reader(self) -> StreamReader | None:
        from .sources import open_source

        if self._read_url is None:
            return None
        name, source = open_source(self._read_url)
        return StreamReader(name, source)

    def append(self, batch: list[fmt.Message], batch_id: str) -> Any:
        return self._client.publish(self.stream, batch, idempotency_key=batch_id)

    def _load(self) -> bytes:
        return self._record.read_bytes()

    def _save(self, data: bytes) -> None:
        self._record.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = self._record.with_name(self._record.name + ".partial")
        partial.write_bytes(data)
        os.replace(partial, self._record)

    def close(self) -> None:
        self._client.close()


def _state_home() -> Path:
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
