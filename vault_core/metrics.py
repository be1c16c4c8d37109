"""What the vault measures, as OpenTelemetry instruments, and where a host sends them.

The instruments are made at import from OpenTelemetry's global meter, so the library records
into whatever MeterProvider its host installs (and into nothing, at no cost, where none is):
`vault serve` installs `install()`'s, whose Prometheus view it answers `GET /metrics` with; the
Function App installs Azure Monitor's (function_app.py), which exports to Application Insights.
Every append, commit and storage retry is counted where it happens, in the writer and the
stores, so both hosts report the same numbers under the same names.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from opentelemetry import metrics

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricReader
    from prometheus_client import CollectorRegistry

# Seconds: an append on Azurite takes about a millisecond, on Azure some tens; one that waited out
# storage's retries, seconds.
SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)  # batches in one commit, operations in one call
STATE_BYTES = (256, 1024, 4096, 16384, 65536, 262144, 1048576)

_meter = metrics.get_meter("message-vault")


class _Committed:
    """What each stream committed, in batches, messages and bytes, as running totals that the
    three counters below report when collected: adding to them costs a commit an integer
    addition, where a measurement costs it some 5 µs in the SDK (as much as an append to memory)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[str, list[int]] = {}  # stream -> [batches, messages, bytes]

    def add(self, stream: str, batches: int, messages: int, size: int) -> None:
        with self._lock:
            totals = self._totals.get(stream)
            if totals is None:
                totals = self._totals[stream] = [0, 0, 0]
            totals[0] += batches
            totals[1] += messages
            totals[2] += size

    def counter(self, index: int) -> Callback:
        def observations(options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
            with self._lock:
                totals = [(stream, values[index]) for stream, values in self._totals.items()]
            return [metrics.Observation(total, {"stream": stream}) for stream, total in totals]

        return observations


Callback = Callable[[metrics.CallbackOptions], Iterable[metrics.Observation]]
_committed = _Committed()

_meter.create_observable_counter(
    "vault.append.batches", callbacks=[_committed.counter(0)], unit="{batch}", description="Batches committed"
)
_meter.create_observable_counter(
    "vault.append.messages",
    callbacks=[_committed.counter(1)],
    unit="{message}",
    description="Messages committed",
)
_meter.create_observable_counter(
    "vault.append.bytes",
    callbacks=[_committed.counter(2)],
    unit="By",
    description="Bytes of batches committed, headers included",
)
append_duration = _meter.create_histogram(
    "vault.append.duration",
    unit="s",
    description="Seconds from an append's call to its outcome (committed, found already stored, or refused)",
    explicit_bucket_boundaries_advisory=SECONDS,
)
commit_size = _meter.create_histogram(
    "vault.commit.size",
    unit="{batch}",
    description="Batches in one commit: above 1, group commit is sharing writes between producers",
    explicit_bucket_boundaries_advisory=BATCHES,
)
storage_retries = _meter.create_counter(
    "vault.storage.retries", unit="{retry}", description="Storage requests sent again after a fault, by kind"
)
storage_faults = _meter.create_counter(
    "vault.storage.faults",
    unit="{fault}",
    description="Storage requests that failed, by kind (retried or not): connection, response, timeout, "
    "throttled, server",
)
writer_takeovers = _meter.create_counter(
    "vault.writer.takeovers", unit="{takeover}", description="Writers opened by ending another writer's lease"
)
writer_fenced = _meter.create_counter(
    "vault.writer.fenced", unit="{writer}", description="Writers stopped because another took their stream"
)
entity_operations = _meter.create_histogram(
    "vault.entity.operations",
    unit="{operation}",
    description="Operations in one invocation of a stream's entity (the Function App)",
    explicit_bucket_boundaries_advisory=BATCHES,
)
entity_state_bytes = _meter.create_histogram(
    "vault.entity.state.bytes",
    unit="By",
    description="Bytes of the state a stream's entity hands back to the Durable runtime (the Function App)",
    explicit_bucket_boundaries_advisory=STATE_BYTES,
)


def appended(stream: str, batches: int, messages: int, size: int) -> None:
    """One commit of `batches` batches holding `messages` messages in `size` bytes."""
    _committed.add(stream, batches, messages, size)
    commit_size.record(batches, {"stream": stream})


def timed(stream: str, started: float, count: int = 1) -> None:
    """`count` appends that began at `started` (time.perf_counter()) have their outcome now."""
    took = time.perf_counter() - started
    for _ in range(count):
        append_duration.record(took, {"stream": stream})


def storage_fault(kind: str, *, retried: bool, stream: str | None) -> None:
    attributes = {"kind": kind} if stream is None else {"kind": kind, "stream": stream}
    storage_faults.add(1, attributes)
    if retried:
        storage_retries.add(1, attributes)


# One consumer group's lag on one stream: the group, the stream, bytes and seconds behind.
LagReading = tuple[str, str, int, float]


class _Lags:
    """A source of lag readings, read once per collection although two gauges ask (a collection
    calls each gauge's callback in turn)."""

    def __init__(self, read: Callable[[], list[LagReading]]) -> None:
        self._read = read
        self._lock = threading.Lock()
        self._read_at = -1.0
        self._readings: list[LagReading] = []

    def current(self) -> list[LagReading]:
        with self._lock:
            if time.monotonic() - self._read_at > 1.0:
                self._readings = self._read()
                self._read_at = time.monotonic()
            return self._readings


_observed: list[_Lags] = []


def _observe(value: Callable[[LagReading], float]) -> Callback:
    def observations(options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        return [
            metrics.Observation(value(reading), {"group": reading[0], "stream": reading[1]})
            for lags in list(_observed)
            for reading in lags.current()
        ]

    return observations


_meter.create_observable_gauge(
    "vault.consumer.lag.bytes",
    callbacks=[_observe(lambda reading: reading[2])],
    unit="By",
    description="Bytes a consumer group has yet to read of a stream",
)
_meter.create_observable_gauge(
    "vault.consumer.lag.seconds",
    callbacks=[_observe(lambda reading: reading[3])],
    unit="s",
    description="Seconds since the first message a consumer group has not read was appended (0: caught up)",
)


def observe_lags(read: Callable[[], list[LagReading]]) -> Callable[[], None]:
    """Report the lags `read` returns each time the metrics are collected (see
    consumer.observe_group_lags); returns what stops it."""
    lags = _Lags(read)
    _observed.append(lags)
    return lambda: _observed.remove(lags)


_installed: CollectorRegistry | None = None
_install_lock = threading.Lock()


def install(readers: Sequence[MetricReader] = ()) -> None:
    """Make this process record the instruments: a MeterProvider with a Prometheus view (what
    `prometheus_text` answers) and `readers` besides. Once per process; later calls change nothing."""
    global _installed
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import CollectorRegistry

    with _install_lock:
        if _installed is not None:
            return
        registry = CollectorRegistry()
        prometheus = PrometheusMetricReader(
            registry=registry, disable_target_info=True, scope_info_enabled=False
        )
        metrics.set_meter_provider(MeterProvider(metric_readers=[prometheus, *readers]))
        _installed = registry


def prometheus_text() -> tuple[bytes, str]:
    """The instruments in Prometheus' text format, and its content type (`install` first)."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    if _installed is None:
        raise RuntimeError("metrics.install() was not called in this process")
    return generate_latest(_installed), CONTENT_TYPE_LATEST
