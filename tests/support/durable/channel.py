"""The host's side of one Python worker process: it starts the worker (tests/support/durable/
worker.py, on the Function App's interpreter), takes its stream, and then speaks to it as the
Functions host does: WorkerInitRequest (the worker indexes the app), FunctionsMetadataRequest (what
it found), a FunctionLoadRequest per function, then InvocationRequests, answered in any order. A
worker that dies fails every invocation it was running."""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import IO, Any

from tests.support import ROOT
from tests.support.durable import rpc
from tests.support.durable.rpc import protos

START_TIMEOUT = 120.0


class WorkerDied(Exception):
    """The worker's stream closed before it answered."""


class WorkerStartFailed(Exception):
    """The worker did not start, or the library refused to index or load the app."""


@dataclass(frozen=True)
class FunctionInfo:
    """A function as the worker's indexing describes it: its id and its bindings' JSON."""

    name: str
    function_id: str
    bindings: tuple[dict[str, Any], ...]

    @property
    def trigger(self) -> dict[str, Any]:
        return next(b for b in self.bindings if b["type"].endswith("Trigger"))


class WorkerChannel:
    def __init__(self, env: dict[str, str], log: IO[bytes], worker_id: str) -> None:
        self.worker_id = worker_id
        self._ids = (f"{worker_id}-{n}" for n in itertools.count())
        self._pending: dict[str, Future[Any]] = {}
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self.closed = threading.Event()
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(START_TIMEOUT)
        started = time.monotonic()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.durable.worker",
                "--port",
                str(listener.getsockname()[1]),
                "--worker-id",
                worker_id,
            ],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        try:
            self._socket, _ = listener.accept()
        except OSError as error:
            self.process.kill()
            raise WorkerStartFailed(f"worker {worker_id} did not connect: {error}") from error
        finally:
            listener.close()
        self._socket.settimeout(None)
        hello = rpc.receive(self._socket)
        if hello is None or hello.start_stream.worker_id != worker_id:
            self.kill()
            raise WorkerStartFailed(f"worker {worker_id} did not start its stream")
        threading.Thread(target=self._read, name=f"{worker_id}-stream", daemon=True).start()
        self.functions = self._initialize()
        # What a cold start costs this worker: the process, the library, importing and indexing
        # the app, loading each function.
        self.start_seconds = time.monotonic() - started

    # --- start-up, as the host runs it

    def _initialize(self) -> dict[str, FunctionInfo]:
        init = self.request(
            worker_init_request=protos.WorkerInitRequest(
                host_version="4.0.0-standin", function_app_directory=str(ROOT)
            )
        ).worker_init_response
        _check(init.result, "worker init (indexing the app)")
        metadata = self.request(
            functions_metadata_request=protos.FunctionsMetadataRequest(function_app_directory=str(ROOT))
        ).function_metadata_response
        _check(metadata.result, "function metadata")
        functions = {}
        for function in metadata.function_metadata_results:
            loaded = self.request(
                function_load_request=protos.FunctionLoadRequest(
                    function_id=function.function_id, metadata=function
                )
            ).function_load_response
            _check(loaded.result, f"loading {function.name}")
            bindings = tuple(json.loads(raw) for raw in function.raw_bindings)
            functions[function.name] = FunctionInfo(function.name, function.function_id, bindings)
        return functions

    # --- requests

    def request(self, **content: Any) -> Any:
        """Sends one request and waits for its answer (start-up only: no timeout of its own)."""
        return self.submit(**content).result(START_TIMEOUT)

    def submit(self, **content: Any) -> Future[Any]:
        """Sends one request; the future resolves to the worker's StreamingMessage answer, or
        fails with WorkerDied."""
        request_id = next(self._ids)
        future: Future[Any] = Future()
        with self._lock:
            if self.closed.is_set():
                future.set_exception(WorkerDied(f"worker {self.worker_id} is gone"))
                return future
            self._pending[request_id] = future
        message = protos.StreamingMessage(request_id=request_id, **content)
        try:
            with self._send_lock:
                rpc.send(self._socket, message)
        except OSError:
            self._fail_all()
        return future

    def invoke(self, function: FunctionInfo, inputs: list[Any]) -> Future[Any]:
        """An InvocationRequest for `function` with its input ParameterBindings; the future
        resolves to the InvocationResponse."""
        invocation_id = next(self._ids)
        request = protos.InvocationRequest(
            invocation_id=invocation_id, function_id=function.function_id, input_data=inputs
        )
        answer = self.submit(invocation_request=request)
        result: Future[Any] = Future()

        def unwrap(done: Future[Any]) -> None:
            error = done.exception()
            if error is not None:
                result.set_exception(error)
            else:
                result.set_result(done.result().invocation_response)

        answer.add_done_callback(unwrap)
        return result

    def _read(self) -> None:
        while True:
            try:
                message = rpc.receive(self._socket)
            except OSError:
                message = None
            if message is None:
                self._fail_all()
                return
            with self._lock:
                future = self._pending.pop(message.request_id, None)
            if future is not None:
                future.set_result(message)

    def _fail_all(self) -> None:
        with self._lock:
            self.closed.set()
            pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(WorkerDied(f"worker {self.worker_id} is gone"))

    # --- the process

    def alive(self) -> bool:
        return self.process.poll() is None and not self.closed.is_set()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        with contextlib.suppress(OSError):
            self._socket.close()
        self._fail_all()


def _check(result: Any, step: str) -> None:
    if result.status != protos.StatusResult.Success:
        raise WorkerStartFailed(f"{step} failed: {result.exception.message}\n{result.exception.stack_trace}")
