"""A log source that counts what is read through it: how much of a stream an operation reads."""

from __future__ import annotations


class CountingSource:
    """Wraps a store's stream log (`store.open_source(stream)`), counting the reads made through it
    and the bytes they returned."""

    def __init__(self, source) -> None:
        self.source, self.bytes_read, self.reads = source, 0, 0

    def read(self, start: int, length: int) -> bytes:
        data = self.source.read(start, length)
        self.bytes_read += len(data)
        self.reads += 1
        return data

    def size(self) -> int:
        return self.source.size()

    def close(self) -> None:
        self.source.close()

    def first_position(self, *, fresh: bool = True) -> int:
        return self.source.first_position(fresh=fresh)

    def segment_bases(self) -> list[int]:
        return self.source.segment_bases()
