"""An HTTP transport for the Azure SDKs that loses a response on purpose: the request reaches
Azurite and takes effect, the answer never comes back, as with a connection dropped mid-reply."""

from __future__ import annotations

from collections.abc import Callable

from azure.core.pipeline.transport import RequestsTransport


class LosingTransport(RequestsTransport):
    """A real HTTP transport that, once armed, delivers the next request `loses` picks to the
    storage and then fails with `error` on the way back, as a dropped connection would. `lost`
    counts the responses lost."""

    def __init__(self, error: Exception, loses: Callable[..., bool]) -> None:
        super().__init__()
        self.error, self.loses = error, loses
        self.armed = False
        self.lost = 0

    def send(self, request, **kwargs):
        response = super().send(request, **kwargs)
        if self.armed and self.loses(request):
            self.armed = False
            self.lost += 1
            raise self.error
        return response
