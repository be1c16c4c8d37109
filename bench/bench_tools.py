"""The consumer tooling beside raw baselines measured in the same run, on the same bytes:

- mirror: `vault_core.mirror.mirror` of an Azurite stream to local disk, against a raw copy of the
  same byte range (ranged Get Blob, 16 MiB at a time, each written to a file, then fdatasync);
- verify: `StreamReader.verify()` of a local stream, against reading its bytes and running CRC32C
  over them (the least any check does);
- time search: `StreamReader.seek_time` on that stream, as the bytes and requests it reads.

    /tmp/v/bin/python bench/bench_tools.py              # about a minute
    /tmp/v/bin/python bench/bench_tools.py --mib 64     # smaller

Scratch data lives in a temporary directory under /tmp; Azurite runs in memory on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from crc32c import crc32c
from report import as_text

import vault_core
from vault_core import format as fmt
from vault_core import mirror
from vault_core.framing import REPLAY_CHUNK

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MB = 1_000_000
REPEATS = 3


def fill(store: vault_core.Store, mib: int) -> list[int]:
    """A stream of `mib` MiB in batches of 1,000 messages of 1 KiB; the batches' end positions."""
    batch = [vault_core.Message(f"key-{i % 8}", os.urandom(1024)) for i in range(1000)]
    ends = []
    with store.writer("bench") as writer:
        while not ends or ends[-1] < mib * 1024 * 1024:
            ends.append(writer.append(batch).position)
    return ends


def best(run, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def raw_copy(blob, length: int, path: Path) -> None:
    with open(path, "wb") as out:
        for at in range(0, length, REPLAY_CHUNK):
            out.write(blob.download_blob(offset=at, length=min(REPLAY_CHUNK, length - at)).readall())
        out.flush()
        os.fdatasync(out.fileno())


def raw_checksum(path: Path) -> None:
    """The least any verification does: read every byte and run CRC32C over it."""
    with open(path, "rb") as log:
        while chunk := log.read(REPLAY_CHUNK):
            crc32c(chunk)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="stream size in MiB")
    args = parser.parse_args()
    from tests.support.azurite import Azurite
    from tests.support.sources import CountingSource

    scratch = Path(tempfile.mkdtemp(prefix="vault-bench-tools-"))
    azurite = Azurite()
    rows = [["workload", "vault", "baseline", "ratio"]]
    try:
        remote = vault_core.open_store(azurite.connection_string, container="bench")
        ends = fill(remote, args.mib)
        end = remote.reader("bench").position()
        blob = remote._container.get_blob_client("bench/log")

        def vault_mirror() -> None:
            shutil.rmtree(scratch / "copy", ignore_errors=True)
            mirror(remote.reader("bench"), scratch / "copy")

        mirrored = best(vault_mirror)
        copied = best(lambda: raw_copy(blob, fmt.data_at(end), scratch / "raw"))
        rows.append(
            [
                "mirror, Azurite to disk",
                f"{end / mirrored / MB:.0f} MB/s",
                f"{end / copied / MB:.0f} MB/s",
                f"{copied / mirrored:.2f}x",
            ]
        )

        local = vault_core.open_store(scratch / "copy")
        log = scratch / "copy" / "bench" / "log"
        verified = best(lambda: local.reader("bench").verify())
        read = best(lambda: raw_checksum(log))
        rows.append(
            [
                "verify, local",
                f"{end / verified / MB:.0f} MB/s",
                f"{end / read / MB:.0f} MB/s",
                f"{read / verified:.2f}x",
            ]
        )

        middle = next(iter(local.reader("bench").replay(ends[len(ends) // 2]))).timestamp
        for name, store in (("local", local), ("Azurite", remote)):
            counting = CountingSource(store.open_source("bench"))
            reader = vault_core.StreamReader("bench", counting)
            took = best(lambda reader=reader: reader.seek_time(middle), 1)
            rows.append(
                [
                    f"seek_time, {name}, {end / MB:.0f} MB stream",
                    f"{took * 1000:.1f} ms",
                    f"{counting.reads} reads, {counting.bytes_read / MB:.2f} MB",
                    f"{counting.bytes_read / end:.4f} of it",
                ]
            )
    finally:
        azurite.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    print(as_text(rows))


if __name__ == "__main__":
    main()
