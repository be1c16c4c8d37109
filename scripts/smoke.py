"""Post-deploy smoke check of a Message Vault HTTP API (the Function App, or `vault serve`).

    python scripts/smoke.py https://<app>.azurewebsites.net/api --key <function key>

Publishes a batch of random messages to a fresh stream, retries it under the same Idempotency-Key
(which must append nothing), fetches the stream's read URL and replays the batch straight from
storage, checking every offset, key and value byte. Prints the timings; exits 0 if all is well,
1 with the reason otherwise.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TypeVar

import vault_core
from vault_core import Message
from vault_core.client import Unauthorized, VaultClient
from vault_core.format import check_stream_name

T = TypeVar("T")

MAX_VALUE_BYTES = 4096


class SmokeFailure(Exception):
    """A check failed: the vault answered, but not what it should have."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="smoke.py", description="Check a deployed Message Vault end to end."
    )
    parser.add_argument("url", help="the HTTP API, e.g. https://<app>.azurewebsites.net/api")
    parser.add_argument("--key", help="the function key (sent as x-functions-key)")
    parser.add_argument(
        "--stream",
        type=_stream_name,
        help="the stream to publish to (default: a new one, smoke-<timestamp>-<random>)",
    )
    parser.add_argument(
        "--messages", type=_message_count, default=100, help="messages in the batch (1-10000; 100)"
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds each call may take, retries included"
    )
    return parser.parse_args(argv)


def _stream_name(value: str) -> str:
    try:
        return check_stream_name(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _message_count(value: str) -> int:
    count = int(value)
    if not 1 <= count <= 10_000:
        raise argparse.ArgumentTypeError("must be between 1 and 10000")
    return count


def random_batch(count: int) -> list[Message]:
    """`count` messages with varied keys and random values of 0 to 4 KiB."""
    rng = random.Random()
    return [Message(f"smoke-{i % 7}", os.urandom(rng.randint(0, MAX_VALUE_BYTES))) for i in range(count)]


def run(args: argparse.Namespace, out: Callable[[str], None]) -> None:
    stream = args.stream or time.strftime("smoke-%Y%m%d-%H%M%S-", time.gmtime()) + uuid.uuid4().hex[:6]
    batch = random_batch(args.messages)
    idempotency_key = f"smoke-{uuid.uuid4().hex}"
    timings: list[tuple[str, float, str]] = []

    def timed(name: str, call: Callable[[], T]) -> T:
        started = time.perf_counter()
        result = call()
        timings.append((name, time.perf_counter() - started, ""))
        return result

    def note(text: str) -> None:
        name, seconds, _ = timings[-1]
        timings[-1] = (name, seconds, text)

    size = sum(len(m.key) + len(m.value) for m in batch)
    out(f"smoke: {args.url} stream {stream}: {len(batch)} messages, {size:,} bytes")
    with VaultClient(args.url, key=args.key, timeout=args.timeout) as client:
        first = timed("publish", lambda: client.publish(stream, batch, idempotency_key=idempotency_key))
        if len(first.offsets) != len(batch):
            raise SmokeFailure(f"publish returned {len(first.offsets)} offsets for {len(batch)} messages")
        if first.offsets != sorted(set(first.offsets)) or first.offsets[-1] >= first.position:
            raise SmokeFailure(f"publish returned offsets out of order: {first}")
        note(f"offsets {first.offsets[0]}..{first.offsets[-1]}, position {first.position}")

        again = timed("retry", lambda: client.publish(stream, batch, idempotency_key=idempotency_key))
        if again != first:
            raise SmokeFailure(f"retry with the same Idempotency-Key returned {again}, expected {first}")
        note("same result")

        info = timed("stream_info", lambda: client.stream_info(stream))
        if info.position != first.position:
            raise SmokeFailure(
                f"stream {stream} is at position {info.position} after the retry, expected "
                f"{first.position}: the retry appended (or another producer wrote to the stream)"
            )
        note(f"position {info.position}: the retry appended nothing")

    reader = vault_core.open_reader(info.read_url)
    with reader:
        stored = timed("replay", lambda: _replay(reader, first.offsets[0], first.position))
        check_replay(batch, first.offsets, stored)
        note(f"{len(stored)} messages match, read from storage")

        middle = len(batch) // 2
        page = timed("read", lambda: reader.read(first.offsets[middle], max_messages=1))
        check_replay(batch[middle : middle + 1], first.offsets[middle : middle + 1], page.messages)
        note(f"message {middle} at offset {first.offsets[middle]} matches")

    out(format_table(timings))
    out("OK")


def _replay(reader: vault_core.StreamReader, start: int, end: int) -> list[vault_core.StoredMessage]:
    with reader.replay(start, end=end) as messages:
        return list(messages)


def check_replay(
    batch: Sequence[Message], offsets: Sequence[int], stored: Sequence[vault_core.StoredMessage]
) -> None:
    if len(stored) != len(batch):
        raise SmokeFailure(f"replay returned {len(stored)} messages, published {len(batch)}")
    for i, (sent, offset, got) in enumerate(zip(batch, offsets, stored, strict=True)):
        if got.offset != offset:
            raise SmokeFailure(f"message {i}: replayed at offset {got.offset}, published at {offset}")
        if got.key != sent.key:
            raise SmokeFailure(f"message {i} (offset {offset}): key {got.key!r}, published {sent.key!r}")
        if got.value != sent.value:
            raise SmokeFailure(
                f"message {i} (offset {offset}): value differs ({len(got.value)} bytes replayed, "
                f"{len(sent.value)} published)"
            )


def format_table(timings: Sequence[tuple[str, float, str]]) -> str:
    width = max(len(name) for name, _, _ in timings)
    lines = [f"{'step':<{width}}  {'ms':>9}  result"]
    lines += [f"{name:<{width}}  {seconds * 1000:>9.1f}  {text}" for name, seconds, text in timings]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args, print)
    except SmokeFailure as failure:
        print(f"smoke: FAILED: {failure}", file=sys.stderr)
        return 1
    except Unauthorized as error:
        hint = "pass the function key with --key" if not args.key else "is --key the right key?"
        print(f"smoke: FAILED: the vault refused the key ({error}); {hint}", file=sys.stderr)
        return 1
    except Exception as error:  # any error is a failed check, reported in one line
        print(f"smoke: FAILED: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
