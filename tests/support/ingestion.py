"""An Application Insights ingestion endpoint on a loopback port, which keeps the telemetry it is
sent: what Azure Monitor's exporter POSTs to `<IngestionEndpoint>/v2.1/track` (a JSON array of
envelopes), answered as the service answers it. Live metrics' requests are answered "not
watched", as when nobody has the portal's live view open."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Ingestion:
    def __init__(self) -> None:
        self.envelopes: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        received = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.path.endswith("/v2.1/track"):
                    sent = json.loads(body)
                    with received._lock:
                        received.envelopes.extend(sent)
                    answer = json.dumps(
                        {"itemsReceived": len(sent), "itemsAccepted": len(sent), "errors": []}
                    )
                    self._answer(answer.encode(), {})
                else:
                    self._answer(b"", {"x-ms-qps-subscribed": "false"})

            def _answer(self, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(200)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def connection_string(self) -> str:
        # A made-up instrumentation key: the endpoint here takes any.
        key = "00000000-0000-4000-8000-000000000000"
        return f"InstrumentationKey={key};IngestionEndpoint={self.url};LiveEndpoint={self.url}"

    @staticmethod
    def offline() -> dict[str, str]:
        """The exporter's settings for a run that reaches nothing but this endpoint: its usage
        reports to Microsoft, remote configuration and the Azure VM metadata probe off, and an
        export every second instead of every minute."""
        return {
            "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
            "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
            "APPLICATIONINSIGHTS_SDKSTATS_DISABLED": "true",
            "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "azure_app_service",
            "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        }

    def metric(self, name: str, **properties: str) -> list[dict[str, Any]]:
        """The data points sent for metric `name` with these properties (attributes)."""
        with self._lock:
            envelopes = list(self.envelopes)
        return [
            point
            for envelope in envelopes
            if envelope.get("data", {}).get("baseType") == "MetricData"
            and all(
                envelope["data"]["baseData"].get("properties", {}).get(k) == v for k, v in properties.items()
            )
            for point in envelope["data"]["baseData"]["metrics"]
            if point["name"] == name
        ]

    def total(self, name: str, **properties: str) -> float:
        """A counter's total (the exporter sends deltas) or a histogram's count."""
        return sum(
            point["count"] if "min" in point else point["value"] for point in self.metric(name, **properties)
        )

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
