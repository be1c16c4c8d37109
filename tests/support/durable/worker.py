"""A Python worker process for the Durable host stand-in. It does what the Python worker's proxy
does around Microsoft's worker library (azure-functions-runtime, Python 3.13+), and nothing more:
it connects to its host, says who it is, and hands each request it gets to the library's handler
for it (init, function metadata, function load, invocation), all on one event loop, each request
as a task of its own so that invocations run concurrently; then sends back what the handler
answered. Indexing the app, converting bindings, running sync functions on the library's thread
pool and async ones on the loop, and turning exceptions into answers are the library's.

    python -m tests.support.durable.worker --port PORT --worker-id ID
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import azure_functions_runtime as runtime

from tests.support.durable.rpc import LENGTH, protos

# What the library answers each request with, by the name of the request's field.
HANDLERS = {
    "worker_init_request": ("worker_init_response", runtime.worker_init_request),
    "functions_metadata_request": ("function_metadata_response", runtime.functions_metadata_request),
    "function_load_request": ("function_load_response", runtime.function_load_request),
    "invocation_request": ("invocation_response", runtime.invocation_request),
}


@dataclass
class Request:
    """What the library's handlers take: the message, and the host's address and the protos."""

    request: Any
    properties: dict[str, Any] = field(default_factory=dict)


async def serve(port: int, worker_id: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lock = asyncio.Lock()

    async def answer(message: Any) -> None:
        kind = message.WhichOneof("content")
        if kind not in HANDLERS:
            return
        if kind == "worker_init_request":
            # The proxy starts the library's pool for sync functions before the app is indexed.
            runtime.start_threadpool_executor()
            directory = message.worker_init_request.function_app_directory
            if directory not in sys.path:
                sys.path.insert(0, directory)
        field_name, handler = HANDLERS[kind]
        response = await handler(Request(message, {"host": "127.0.0.1", "protos": protos}))
        reply = protos.StreamingMessage(request_id=message.request_id, **{field_name: response})
        data = reply.SerializeToString()
        async with lock:
            writer.write(LENGTH.pack(len(data)) + data)
            await writer.drain()

    hello = protos.StreamingMessage(start_stream=protos.StartStream(worker_id=worker_id)).SerializeToString()
    writer.write(LENGTH.pack(len(hello)) + hello)
    await writer.drain()
    tasks: set[asyncio.Task[None]] = set()
    while True:
        try:
            head = await reader.readexactly(LENGTH.size)
            body = await reader.readexactly(LENGTH.unpack(head)[0])
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # the host closed the stream: the worker ends
        message = protos.StreamingMessage()
        message.ParseFromString(body)
        kind = message.WhichOneof("content")
        # Named for what it runs: asyncio's debug mode names slow tasks in the log.
        name = f"{kind} {message.invocation_request.function_id}" if kind == "invocation_request" else kind
        task = asyncio.create_task(answer(message), name=name)
        tasks.add(task)
        task.add_done_callback(tasks.discard)


def instrument(traced: str, slowed: str) -> None:
    """For tests that must see or stretch a piece of the app's work: each call of a function named
    in `traced` ("module:function,...") is logged with the thread it ran on, and the first calls
    of one in `slowed` ("module:function=seconds[*calls],...") wait that long before they run.
    A profile hook on every thread, so only workers that are asked for it pay for it."""
    wanted = {tuple(name.split(":", 1)) for name in traced.split(",") if ":" in name}
    delays: dict[tuple[str, str], list[float]] = {}
    for item in filter(None, slowed.split(",")):
        name, _, delay = item.partition("=")
        seconds, _, calls = delay.partition("*")
        delays[tuple(name.split(":", 1))] = [float(seconds)] * int(calls or 1)  # type: ignore[index]
    log = logging.getLogger("standin.trace")
    lock = threading.Lock()

    def hook(frame: Any, event: str, _arg: Any) -> None:
        if event != "call":
            return
        key = (frame.f_globals.get("__name__"), frame.f_code.co_name)
        if key in wanted:
            thread = threading.current_thread()
            main = thread is threading.main_thread()
            log.info("traced %s:%s on thread %s (main: %s)", *key, thread.name, main)
        if key in delays:
            with lock:
                pending = delays[key]
                delay = pending.pop() if pending else 0.0
            if delay:
                log.info("slowed %s:%s by %.1f s", *key, delay)
                time.sleep(delay)

    threading.setprofile_all_threads(hook)  # type: ignore[attr-defined]  # 3.12+: the worker runs on 3.13
    sys.setprofile(hook)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--worker-id", required=True)
    args = parser.parse_args()
    # The app's and the library's log lines go to the instance's log (the host's console).
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    if os.environ.get("STANDIN_TRACE_CALLS") or os.environ.get("STANDIN_SLOW_CALLS"):
        instrument(os.environ.get("STANDIN_TRACE_CALLS", ""), os.environ.get("STANDIN_SLOW_CALLS", ""))
    # The proxy worker runs its loop on uvloop where it is installed (it is: vault_core needs it).
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.port, args.worker_id))
    else:
        asyncio.run(serve(args.port, args.worker_id), loop_factory=uvloop.new_event_loop)  # type: ignore[call-arg]  # 3.12+


if __name__ == "__main__":
    main()
