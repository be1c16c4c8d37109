"""The vault's metrics as this test process records them: an in-memory reader on the same
MeterProvider that `vault serve` installs (vault_core.metrics.install), read as totals."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from prometheus_client.parser import text_string_to_metric_families

from vault_core import metrics

READER = InMemoryMetricReader()


def install() -> None:
    metrics.install([READER])


def _points(name: str, **attributes: str) -> Iterator[tuple[dict[str, Any], Any]]:
    """The data points of metric `name` that have these attributes (and any others)."""
    data = READER.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:
                        labels = dict(point.attributes or {})
                        if all(labels.get(key) == value for key, value in attributes.items()):
                            yield labels, point


def total(name: str, **attributes: str) -> float:
    """A counter's total, or a histogram's count, over the points with these attributes."""
    return sum(
        point.count if isinstance(point, HistogramDataPoint) else point.value
        for _labels, point in _points(name, **attributes)
    )


def histogram_sum(name: str, **attributes: str) -> float:
    return sum(point.sum for _labels, point in _points(name, **attributes))


def by(name: str, key: str, **attributes: str) -> dict[str, float]:
    """A counter's totals by the value of attribute `key`."""
    totals: dict[str, float] = {}
    for labels, point in _points(name, **attributes):
        if key in labels:
            totals[labels[key]] = totals.get(labels[key], 0) + point.value
    return totals


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str, **headers: str) -> Samples:
    """GET /metrics of the `vault serve` at `url`: each sample by name and labels."""
    answer = httpx.get(f"{url}/metrics", headers=headers, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def summed(samples: Samples, name: str, **labels: str) -> float:
    """The samples named `name` with these labels (and any others), added up."""
    wanted = set(labels.items())
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and wanted <= sample_labels
    )
