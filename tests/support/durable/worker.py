"""A Python worker process for the Durable host stand-in: it imports the Function App as the
Azure Functions Python worker does (`function_app.app.get_functions()`, once) and runs the
functions it is handed through their own handles: sync functions on a thread pool the size the
worker uses (PYTHON_THREADPOOL_THREAD_COUNT, else min(32, cpus + 4)), async ones on one event
loop. It takes invocations over HTTP on a free loopback port, which it prints as `ready <port>`.

    python -m tests.support.durable.worker
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import azure.functions as func
from azure.functions.timer import TimerRequest

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the app's root, as the host sets it

import function_app

FUNCTIONS = {f.get_function_name(): f for f in function_app.app.get_functions()}
THREADS = int(os.environ.get("PYTHON_THREADPOOL_THREAD_COUNT") or min(32, (os.cpu_count() or 1) + 4))
POOL = ThreadPoolExecutor(THREADS, thread_name_prefix="sync-invocation")
LOOP = asyncio.new_event_loop()


def describe() -> list[dict[str, Any]]:
    """Each function's trigger, as the host learns it from the worker's indexing."""
    described = []
    for name, function in FUNCTIONS.items():
        bindings = [json.loads(b) for b in function.get_raw_bindings()]
        trigger = next(b for b in bindings if b["type"].endswith("Trigger"))
        described.append(
            {
                "name": name,
                "trigger": trigger["type"],
                "route": trigger.get("route"),
                "methods": trigger.get("methods"),
                "authLevel": trigger.get("authLevel"),
            }
        )
    return described


def invoke(request: dict[str, Any]) -> dict[str, Any]:
    function = FUNCTIONS[request["function"]]
    arguments: dict[str, Any] = {}
    for binding in (json.loads(b) for b in function.get_raw_bindings()):
        kind, name = binding["type"], binding["name"]
        if kind == "httpTrigger":
            sent = request["http"]
            arguments[name] = func.HttpRequest(
                method=sent["method"],
                url=sent["url"],
                headers=sent["headers"],
                params=sent["params"],
                route_params=sent["route_params"],
                body=base64.b64decode(sent["body"]),
            )
        elif kind == "orchestrationTrigger":
            arguments[name] = func.OrchestrationContext(request["context"])
        elif kind == "entityTrigger":
            arguments[name] = func.EntityContext(request["context"])
        elif kind == "timerTrigger":
            arguments[name] = TimerRequest(past_due=False)
        elif kind == "durableClient":
            arguments[name] = request["client"]
    user_function = function.get_user_function()
    if asyncio.iscoroutinefunction(user_function):
        result = asyncio.run_coroutine_threadsafe(user_function(**arguments), LOOP).result()
    else:
        result = POOL.submit(user_function, **arguments).result()
    if isinstance(result, func.HttpResponse):
        return {
            "status": result.status_code,
            "headers": dict(result.headers),
            "mimetype": result.mimetype,
            "body": base64.b64encode(result.get_body()).decode(),
        }
    return {"result": result}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._reply(200, describe())

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        try:
            self._reply(200, invoke(request))
        except Exception as error:  # the invocation failed: the host sees the message
            self._reply(200, {"error": str(error), "traceback": traceback.format_exc()})


def main() -> None:
    threading.Thread(target=LOOP.run_forever, daemon=True).start()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(f"ready {server.server_address[1]}", flush=True)
    server.serve_forever(poll_interval=0.1)


if __name__ == "__main__":
    main()
