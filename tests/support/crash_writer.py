"""A writer process for crash tests: appends batches FIRST..LAST-1 of a fixed sequence, each with
batch id `batch-<i>`, and prints `ack <i> <position>` once each append has returned.

    python -m tests.support.crash_writer STORE CONTAINER STREAM FIRST LAST
"""

from __future__ import annotations

import sys
import time

import vault_core
from vault_core import Message


def batch_messages(index: int) -> list[Message]:
    """The messages of batch `index`: deterministic, of varied sizes, every 7th above 4 MiB."""
    if index % 7 == 6:
        return [Message(f"big-{index}-{i}", bytes([index % 251]) * (900 * 1024)) for i in range(5)]
    count = 1 + (index * 37) % 200
    return [Message(f"m-{index}-{i}", f"{index}:{i}".encode() * (1 + i % 30)) for i in range(count)]


def main(target: str, container: str, stream: str, first: int, last: int) -> None:
    store = vault_core.open_store(target, container=container)
    deadline = time.monotonic() + 60
    while True:  # a crashed predecessor's blob lease frees itself within lease_seconds
        try:
            writer = store.writer(stream, lease_seconds=15)
            break
        except vault_core.StreamBusyError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.25)
    print("ready", flush=True)
    for index in range(first, last):
        result = writer.append(batch_messages(index), batch_id=f"batch-{index}")
        print(f"ack {index} {result.position}", flush=True)
    writer.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
