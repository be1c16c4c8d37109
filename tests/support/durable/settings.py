"""The stand-in's settings: the Durable extension's, from the app's host.json; the plan's, from
the Bicep's parameter defaults; and the storage and platform times tests may scale down."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.support import ROOT

if TYPE_CHECKING:
    from tests.support.azurite import Azurite


def _seconds(span: str) -> float:
    """host.json's "[d.]hh:mm:ss[.fff]"."""
    hours, minutes, seconds = span.split(":")
    days, _, hours = hours.rpartition(".")
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


@dataclass(frozen=True)
class Settings:
    """The extension's settings, from host.json; the plan's, from the Bicep's defaults; and the
    storage and platform behaviour that tests may scale."""

    partition_count: int = 4
    max_polling_interval: float = 30.0
    control_queue_batch_size: int = 32
    buffer_threshold: int = 256
    max_entity_batch: int = 5000
    max_concurrent: int = 10 * (os.cpu_count() or 1)
    function_timeout: float = 1800.0
    reorder_window_minutes: float = 30.0  # entityMessageReorderWindowInMinutes (0: no sorting)
    # Flex Consumption (infra/main.bicep): HTTP requests an instance serves at once (Python's
    # default is 1), and the most instances a group scales out to.
    http_concurrency: int = 1
    max_instances: int = 100
    front_end_timeout: float = 230.0  # the front end's limit on an HTTP answer
    # Storage and partition-manager behaviour (DTFx defaults), scaled down by tests:
    visibility_timeout: float = 300.0
    lease_interval: float = 30.0
    acquire_interval: float = 10.0
    drain_timeout: float = 60.0
    storage_latency: float = 0.008  # one Azure Storage round trip in a region
    worker_restart_delay: float = 1.0

    @property
    def reorder_window(self) -> float:
        return self.reorder_window_minutes * 60

    @classmethod
    def from_host_json(cls, path: Path = ROOT / "host.json", **overrides: Any) -> Settings:
        """host.json's settings, and the plan's as infra/main.bicep deploys it by default."""
        config = json.loads(path.read_text())
        durable = config.get("extensions", {}).get("durableTask", {})
        sections = {"root": config, "durable": durable, "provider": durable.get("storageProvider", {})}
        values: dict[str, Any] = {}
        for field_name, (section, key) in _HOST_JSON.items():
            if key in sections[section]:
                value = sections[section][key]
                values[field_name] = _seconds(value) if isinstance(value, str) else value
        bicep = (ROOT / "infra" / "main.bicep").read_text()
        for field_name, parameter in _BICEP.items():
            found = re.search(rf"^param {parameter} int = (\d+)$", bicep, re.M)
            if found:
                values[field_name] = int(found.group(1))
        return cls(**{**values, **overrides})


# Settings fields read from the Bicep's parameter defaults.
_BICEP = {"http_concurrency": "httpPerInstanceConcurrency", "max_instances": "maximumInstanceCount"}
# Settings fields read from host.json: (section, key); durations are "[d.]hh:mm:ss" strings.
_HOST_JSON = {
    "partition_count": ("provider", "partitionCount"),
    "max_polling_interval": ("provider", "maxQueuePollingInterval"),
    "control_queue_batch_size": ("provider", "controlQueueBatchSize"),
    "buffer_threshold": ("provider", "controlQueueBufferThreshold"),
    "visibility_timeout": ("provider", "controlQueueVisibilityTimeout"),
    "max_entity_batch": ("durable", "maxEntityOperationBatchSize"),
    "max_concurrent": ("durable", "maxConcurrentOrchestratorFunctions"),
    "function_timeout": ("root", "functionTimeout"),
    "reorder_window_minutes": ("durable", "entityMessageReorderWindowInMinutes"),
}


def scaled(factor: float, **overrides: Any) -> Settings:
    """The app's settings with the storage provider's lease, visibility and drain times scaled by
    `factor` (tests cannot wait 5 minutes for a redelivery)."""
    base = Settings.from_host_json()
    times = {
        "visibility_timeout": base.visibility_timeout * factor,
        "lease_interval": base.lease_interval * factor,
        "acquire_interval": base.acquire_interval * factor,
        "drain_timeout": base.drain_timeout * factor,
    }
    return replace(base, **{**times, **overrides})


def app_settings(azurite: Azurite, container: str, **extra: str) -> dict[str, str]:
    """The app's settings on Azurite, with the host's own as the deployment sets them."""
    deployed = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    return {
        "FUNCTIONS_REQUEST_BODY_SIZE_LIMIT": deployed["FUNCTIONS_REQUEST_BODY_SIZE_LIMIT"],
        "AzureWebJobsStorage": azurite.connection_string,
        "VAULT_STORE": azurite.connection_string,
        "VAULT_CONTAINER": container,
        "VAULT_STAGING_CONTAINER": f"{container}-staging",
        "VAULT_WAIT_SECONDS": "3",
        "VAULT_TASK_HUB": "vault",
        **extra,
    }
