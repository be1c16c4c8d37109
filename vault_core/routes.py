"""The HTTP API's routes, spelled once. Both hosts (`vault serve`'s router, the Function App's
`route=` arguments), the client's URLs and the OpenAPI document's paths are built from this table,
so a route cannot be one thing in one place and another elsewhere (tests/test_openapi.py and the
Function App's tests compare what each host serves with the document)."""

from __future__ import annotations

from dataclasses import dataclass

API_PREFIX = "/api"  # where the Functions host puts every HTTP function; vault serve does the same


@dataclass(frozen=True)
class Route:
    name: str  # the operation: the hosts' handler and the OpenAPI operationId
    methods: tuple[str, ...]
    template: str  # under API_PREFIX, parameters in braces: "streams/{stream}/log"
    public: bool = False  # answered without a key (health, this document, the console's files)
    rest: str | None = None  # the last parameter takes the rest of the path, slashes and all

    @property
    def path(self) -> str:
        """The path as the OpenAPI document and Starlette spell it: /api/streams/{stream}."""
        return f"{API_PREFIX}/{self.template}"

    @property
    def functions_route(self) -> str:
        """The `route=` of an Azure Functions HTTP trigger: relative to /api, a catch-all as {*name}."""
        return self.template.replace(f"{{{self.rest}}}", f"{{*{self.rest}}}") if self.rest else self.template

    @property
    def prefix(self) -> str:
        """The path before the first parameter: where a mount (the console's files) begins."""
        return self.path.split("{", 1)[0].rstrip("/")

    def operation_id(self, method: str) -> str:
        """The OpenAPI operationId, which must be unique: the name, and the method where there
        are several."""
        return self.name if len(self.methods) == 1 else f"{self.name}_{method.lower()}"

    def url(self, **parameters: str) -> str:
        """The path with its parameters filled in: stream names and batch ids, whose characters
        need no quoting in a path (format.STREAM_NAME, format.BATCH_ID)."""
        return self.path.format(**parameters)


PUBLISH = Route("publish", ("POST",), "streams/{stream}")
STREAM_INFO = Route("stream_info", ("GET",), "streams/{stream}")
BATCH_STATUS = Route("batch_status", ("GET",), "streams/{stream}/batches/{token}")
STREAM_LOG = Route("stream_log", ("GET", "HEAD"), "streams/{stream}/log")
LIST_STREAMS = Route("list_streams", ("GET",), "streams")
LIST_GROUPS = Route("list_groups", ("GET",), "groups")
CONSOLE = Route("console", ("GET",), "console/{path}", public=True, rest="path")
HEALTH = Route("health", ("GET",), "health", public=True)
OPENAPI = Route("openapi", ("GET",), "openapi.json", public=True)

ROUTES = (PUBLISH, STREAM_INFO, BATCH_STATUS, STREAM_LOG, LIST_STREAMS, LIST_GROUPS, CONSOLE, HEALTH, OPENAPI)
