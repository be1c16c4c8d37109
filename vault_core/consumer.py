"""A consumer of a consumer group: reads a stream from the group's checkpoint and moves the
checkpoint past each batch once the batch is handled. A consumer that dies in between gets that
batch again (at-least-once); none is ever skipped."""

from __future__ import annotations

from collections.abc import Iterator

from .checkpoints import Checkpoint, Checkpoints
from .reader import ReadResult, StreamReader


class Consumer:
    """Reads `reader`'s stream as the group of `checkpoints`, from its checkpoint, or from `start`
    while the group has none."""

    def __init__(self, reader: StreamReader, checkpoints: Checkpoints, *, start: int = 0) -> None:
        if isinstance(start, bool) or not isinstance(start, int):
            raise TypeError(f"start must be an int, got {type(start).__name__}")
        if start < 0:
            raise ValueError(f"start must not be negative, got {start}")
        self.reader = reader
        self.checkpoints = checkpoints
        self.start = start
        self._checkpoint: Checkpoint | None = None
        self._loaded = False

    def __repr__(self) -> str:
        return f"Consumer({self.checkpoints.group!r}, {self.reader.stream!r})"

    @property
    def position(self) -> int:
        """Where the group resumes: its checkpoint as this consumer last read or saved it, or
        `start` if it has none."""
        if not self._loaded:
            self._load()
        return self._checkpoint.position if self._checkpoint else self.start

    def batches(self, *, follow: bool = False, poll_interval: float = 1.0) -> Iterator[ReadResult]:
        """The stream's batches from the group's checkpoint on (as `StreamReader.batches`). The
        checkpoint moves past a batch when the caller comes back for the next one, or the
        iteration ends; not when the caller stops early, so a batch it did not finish comes again.
        CheckpointConflict if another consumer of the group moved the checkpoint meanwhile."""
        self._load()
        batches = self.reader.batches(self.position, follow=follow, poll_interval=poll_interval)
        try:
            for batch in batches:
                yield batch
                if batch.next_position != self.position:
                    self._checkpoint = self.checkpoints.save(
                        self.reader.stream, batch.next_position, expected=self._checkpoint
                    )
        finally:
            batches.close()  # type: ignore[attr-defined]  # stops its read-ahead thread now

    def commit(self, position: int) -> None:
        """Move the group's checkpoint to `position` now: an offset inside the batch in hand, when
        only the messages before it were handled. CheckpointConflict as for `batches`."""
        self._checkpoint = self.checkpoints.save(self.reader.stream, position, expected=self._checkpoint)

    def _load(self) -> None:
        self._checkpoint = self.checkpoints.get(self.reader.stream)
        self._loaded = True
