"""A consumer process for tests: reads STREAM as GROUP, exclusively, printing `handled <key>` for
each message once its batch is handled (it sleeps DELAY seconds per batch, as real work would),
until the stream has been read to its end.

    python -m tests.support.consume STORE CONTAINER STREAM GROUP DELAY LEASE
"""

from __future__ import annotations

import sys
import time

import vault_core


def main(target: str, container: str, stream: str, group: str, delay: float, lease: float) -> None:
    store = vault_core.open_store(target, container=container)
    with store.checkpoints(group) as checkpoints:
        consumer = vault_core.Consumer(store.reader(stream), checkpoints, exclusive=True, lease_seconds=lease)
        print("waiting", flush=True)
        for batch in consumer.batches(poll_interval=0.1):
            time.sleep(delay)
            print("".join(f"handled {m.key}\n" for m in batch.messages), end="", flush=True)
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]), float(sys.argv[6]))
