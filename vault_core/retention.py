"""A stream's retention: how much of its past it keeps once old segments may go.

A policy keeps at least the stream's last `keep_bytes` bytes and at least what was appended in
its last `keep_days` days (either, both, or neither: `Retention()` keeps everything, the
default). It is stored beside the streams, as `_retention/<stream>.json`, so every host and tool
sees the same one. The stream's writer applies it each time it rolls into a new segment (the
moment a segment becomes removable) and `vault retention --apply` applies it at once. Whatever it
leaves, trimming removes only whole sealed segments, never the newest: a stream keeps at least
what the policy asks, and up to one segment more.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from .errors import CorruptDataError, check_int
from .framing import LogFrames
from .seek import seek_time
from .stores.base import Backend, StreamLog

POLICY_FOLDER = "_retention"  # not a valid stream name, so never listed as a stream
MAX_KEEP_DAYS = 36500.0


@dataclass(frozen=True)
class Retention:
    """Keep at least the last `keep_bytes` bytes and the last `keep_days` days (None: no bound
    of that kind); both bounds hold when both are given."""

    keep_bytes: int | None = None
    keep_days: float | None = None

    def __post_init__(self) -> None:
        if self.keep_bytes is not None and check_int("keep_bytes", self.keep_bytes) < 0:
            raise ValueError(f"keep_bytes must be 0 or more, got {self.keep_bytes}")
        if self.keep_days is not None:
            if isinstance(self.keep_days, bool) or not isinstance(self.keep_days, int | float):
                raise TypeError(f"keep_days must be a number of days, got {type(self.keep_days).__name__}")
            if not (math.isfinite(self.keep_days) and 0 <= self.keep_days <= MAX_KEEP_DAYS):
                raise ValueError(f"keep_days must be 0 to {MAX_KEEP_DAYS:g}, got {self.keep_days}")

    @property
    def keeps_everything(self) -> bool:
        return self.keep_bytes is None and self.keep_days is None

    def __str__(self) -> str:
        if self.keeps_everything:
            return "keep everything"
        kept = [f"the last {self.keep_bytes} bytes"] if self.keep_bytes is not None else []
        kept += [f"the last {self.keep_days:g} days"] if self.keep_days is not None else []
        return "keep at least " + " and ".join(kept)

    def trim_point(self, stream: str, log: StreamLog, now: datetime | None = None) -> int:
        """The position below which this policy lets the stream's data go (0: none of it)."""
        if self.keeps_everything:
            return 0
        frames = LogFrames(stream, log)
        end = frames.commit_record().position
        points = [max(0, end - self.keep_bytes)] if self.keep_bytes is not None else []
        if self.keep_days is not None:
            since = (now or datetime.now(UTC)) - timedelta(days=self.keep_days)
            points.append(seek_time(frames, since))
        return min(points)

    def to_json(self) -> bytes:
        return json.dumps({"keep_bytes": self.keep_bytes, "keep_days": self.keep_days}).encode()

    @classmethod
    def from_json(cls, stream: str, data: bytes) -> Retention:
        try:
            fields = json.loads(data)
            return cls(keep_bytes=fields["keep_bytes"], keep_days=fields["keep_days"])
        except (ValueError, TypeError, KeyError) as error:
            raise CorruptDataError(stream, 0, f"its retention policy cannot be read: {error}") from None


def policy_name(stream: str) -> str:
    return f"{POLICY_FOLDER}/{stream}.json"


def load(backend: Backend, stream: str) -> Retention:
    """The stream's policy: keep everything if none was set."""
    try:
        return Retention.from_json(stream, backend.read_file(policy_name(stream)))
    except FileNotFoundError:
        return Retention()


def save(backend: Backend, stream: str, policy: Retention) -> None:
    """Store the stream's policy (keeping everything is stored as no policy at all)."""
    if policy.keeps_everything:
        backend.delete_file(policy_name(stream))
    else:
        backend.write_file(policy_name(stream), policy.to_json())
