"""Where the Function App's metrics go: Application Insights, through Azure Monitor's
OpenTelemetry distro, when APPLICATIONINSIGHTS_CONNECTION_STRING is set (the Bicep sets it).

The distro exports the vault's metrics (vault_core.metrics), consumer lag included, and nothing
else: requests, logs and the Durable runtime's telemetry reach Application Insights through the
Functions host, as before (host.json's telemetryMode is OpenTelemetry, so host and worker speak
the same conventions), and sending logs from here too would send each twice. The distro's
instrumentation of HTTP clients and the Azure SDKs stays off: it would make each storage request
of each append a dependency record, costing more than the append; the storage metrics count
what matters of them.

With APPLICATIONINSIGHTS_AUTHENTICATION_STRING `Authorization=AAD` (the Bicep's: the component
takes only Entra ID-authenticated telemetry), the app's managed identity signs what it sends.
Do not also set PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: the worker would configure the distro
a second time, without the identity.
"""

from __future__ import annotations

import os
from typing import Any

from ..consumer import observe_group_lags
from .settings import setting, store

_INSTRUMENTED = ("azure_sdk", "requests", "urllib", "urllib3", "django", "fastapi", "flask", "psycopg2")
_OFF = {name: {"enabled": False} for name in _INSTRUMENTED}


def export_metrics() -> bool:
    """Start exporting the metrics if Application Insights is configured; whether it is."""
    connection_string = setting("APPLICATIONINSIGHTS_CONNECTION_STRING")
    if not connection_string:
        return False
    from azure.monitor.opentelemetry import configure_azure_monitor

    # The distro's way of leaving a signal out (its disable_* arguments are not honoured).
    os.environ.setdefault("OTEL_LOGS_EXPORTER", "none")
    os.environ.setdefault("OTEL_TRACES_EXPORTER", "none")
    configure_azure_monitor(
        connection_string=connection_string, credential=_credential(), instrumentation_options=_OFF
    )
    # Each export (every minute) reads the consumer groups' lag: a Table query per group and a
    # commit record per stream they read. Every instance reports it: take the largest.
    observe_group_lags(store())
    return True


def _credential() -> Any:
    """The managed identity, when the connection asks for Entra ID (ClientId=: a user-assigned one)."""
    authentication = setting("APPLICATIONINSIGHTS_AUTHENTICATION_STRING") or ""
    parts = dict(part.split("=", 1) for part in authentication.split(";") if "=" in part)
    if parts.get("Authorization", "").upper() != "AAD":
        return None
    from azure.identity import ManagedIdentityCredential

    client_id = parts.get("ClientId")
    return ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()
