"""`vault_core.publish` (what `vault publish` runs) beside a raw baseline measured in the same run,
on the same JSON-lines file and a local store:

- first publish: `publish(stream, file, store=...)` of a new input, against the least any
  publisher of that file does: parse its lines and append them in batches of the same size, each
  with a batch id (`StreamWriter.append`);
- again: the same command on the same file, everything in already (what a re-run after success
  costs), against parsing every line, which any publish that checks its whole input first must;
- grown: the file grown by a tenth at its end and published again, against parsing every line and
  appending the new tenth.

    .venv/bin/python bench/bench_publish.py              # 200,000 lines, under a minute
    .venv/bin/python bench/bench_publish.py --lines 20000

Scratch data lives in a temporary directory under /tmp.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from report import as_text

import vault_core
from vault_core.lines import parse_lines


def timed(run: Callable[[], object], repeats: int) -> float:
    """The best of `repeats` runs, in seconds (each run sets up its own stream)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def write_lines(path: Path, start: int, count: int) -> None:
    with path.open("a") as file:
        for n in range(start, start + count):
            file.write(
                json.dumps({"key": f"order-{n % 97}", "value": f'{{"order": {n}, "amount": {n % 1000}.5}}'})
            )
            file.write("\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=200_000, help="lines in the input (200,000)")
    parser.add_argument("--batch-size", type=int, default=1000, help="messages per batch (1,000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure, the best kept (3)")
    args = parser.parse_args(argv)
    tenth = args.lines // 10
    with tempfile.TemporaryDirectory(dir="/tmp") as scratch:
        root = Path(scratch)
        store = vault_core.open_store(root / "vault")
        source, grown = root / "input.jsonl", root / "grown.jsonl"
        write_lines(source, 0, args.lines)
        write_lines(grown, 0, args.lines + tenth)
        streams = (f"s{n}" for n in range(10_000))

        def raw(path: Path, *, skip: int = 0, append: bool = True) -> Callable[[], None]:
            """Parse every line of `path`; append those after the first `skip` in batches."""

            def run() -> None:
                with path.open("rb") as file, store.writer(next(streams)) as writer:
                    batch: list[vault_core.Message] = []
                    for number, message in enumerate(parse_lines(file)):
                        if number < skip or not append:
                            continue
                        batch.append(message)
                        if len(batch) == args.batch_size:
                            writer.append(batch, batch_id=uuid.uuid4().hex)
                            batch = []
                    if batch:
                        writer.append(batch, batch_id=uuid.uuid4().hex)

            return run

        def published(path: Path, stream: str | None = None) -> Callable[[], None]:
            def run() -> None:
                result = vault_core.publish(
                    stream or next(streams), path, store=store, batch_size=args.batch_size
                )
                assert result.complete

            return run

        first = timed(published(source), args.repeats)
        baseline = timed(raw(source), args.repeats)
        checked = timed(raw(source, append=False), args.repeats)
        published(source, "again")()
        again = timed(published(source, "again"), args.repeats)
        floor = timed(raw(grown, skip=args.lines), args.repeats)
        grown_seconds = float("inf")
        for _ in range(args.repeats):
            stream = next(streams)
            published(source, stream)()
            grown_seconds = min(grown_seconds, timed(published(grown, stream), 1))
            held = store.reader(stream).replay()
            assert sum(1 for _ in held) == args.lines + tenth  # each line once
    rows = [
        ("first publish", f"{args.lines:,} lines", first, "parse + append them", baseline),
        ("again, all in", f"{args.lines:,} lines", again, "parse them", checked),
        (
            "grown by a tenth",
            f"{args.lines:,} + {tenth:,} lines",
            grown_seconds,
            "parse all, append the tenth",
            floor,
        ),
    ]
    table = [["workload", "input", "seconds", "baseline", "baseline s", "ratio"]]
    for name, size, seconds, base_name, base in rows:
        table.append([name, size, f"{seconds:.2f}", base_name, f"{base:.2f}", f"{seconds / base:.2f}x"])
    print(as_text(table))


if __name__ == "__main__":
    sys.exit(main())
