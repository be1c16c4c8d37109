"""A stand-in for the Azure Functions host with the Durable extension on the Azure Storage
provider, for tests: it stands in for the host's dispatching only, never for the app or the SDKs.

The app runs in real worker processes (tests/support/durable/worker.py), each one "instance" of the
app whose host side (partition manager, queue pollers, dispatcher, checkpoints) runs here as
threads. What it models, as read from the extension (v2.x/v3.x), DTFx.AzureStorage and the
Python SDK:

* partitions: an instance id maps to a control queue by FNV-1a; each partition is owned by one
  instance through a lease that must be renewed (the table partition manager); a new instance
  steals cooperatively (the owner drains, then releases); an instance that stops renewing (dead,
  frozen) loses its partitions when the lease expires;
* polling: each owned queue is polled with DTFx's backoff, 50 ms doubling to
  maxQueuePollingInterval, reset by a dequeue or by a message this instance itself enqueued;
  every storage call pays a round trip of latency;
* batching: messages are grouped per instance; an entity gets the operations queued for it, up to
  maxEntityOperationBatchSize, in one invocation; maxConcurrentOrchestratorFunctions work items
  (orchestrations and entities alike) run at once per instance;
* at-least-once: a work item whose invocation fails is abandoned and comes back after 2^n s; the
  messages of a dead or frozen instance come back after the visibility timeout, possibly to
  another instance, while the old one may still run (split brain); a checkpoint first sends the
  outbound messages, then stores the history or entity state only if its ETag still matches, then
  deletes its inputs, so a loser's responses are delivered although its state is discarded;
* entity requests from orchestrations go through the extension's message sorter, which drops a
  request older than the last one from the same orchestration, and remembers each orchestration
  for entityMessageReorderWindowInMinutes (with 0, nothing is sorted or dropped); the entity's
  state is saved as the extension saves it, sorter and queued requests included, its size
  recorded and its cost charged (taskhub.py); an entity batch that exceeds functionTimeout
  answers every operation with the host's timeout error, keeps the state it had, and the worker
  process is restarted;
* durable timers (a message invisible until its time), the client's HTTP API (start, status,
  purge) on a local RPC endpoint, and HTTP functions behind a front door.

Times such as lease and visibility timeouts can be scaled down for tests (settings.py); everything
else follows the app's host.json. This module holds the instances (worker process, invocation,
freezing and dying, dispatching) and the host around them; partitions.py the partition manager
and the queue pollers; work.py how a work item runs and is checkpointed; taskhub.py the task
hub's storage; channel.py, bindings.py and protocol.py the worker and the extension's wire.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC, datetime
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.support.durable import bindings, client_api, frontdoor
from tests.support.durable import protocol as p
from tests.support.durable.bindings import Answer, HttpCall
from tests.support.durable.channel import FunctionInfo, WorkerChannel, WorkerDied, WorkerStartFailed
from tests.support.durable.partitions import PartitionManager
from tests.support.durable.settings import Settings
from tests.support.durable.taskhub import Record, TaskHub
from tests.support.durable.work import (
    TERMINAL,
    FunctionTimedOut,
    InvocationFailed,
    Stopped,
    WorkItem,
    WorkRunner,
)


class AppInstance:
    """One instance of the app: a Functions host with its Durable extension (threads here) and
    its Python worker (a real process, restarted by the host when it dies or times out)."""

    def __init__(self, host: DurableHost, name: str, group: str = "durable") -> None:
        self.host, self.name, self.settings = host, name, host.settings
        # Flex Consumption's function group: "durable" instances own the task hub's partitions
        # and run the orchestrations and entities; "http" ones the HTTP functions; a timer gets
        # instances of its own ("function:<name>").
        self.group = group
        self.http_requests = 0  # HTTP requests it runs now (at most Settings.http_concurrency)
        self.ran: Counter[str] = Counter()  # invocations, by function
        self.alive = True
        self.running = threading.Event()  # cleared while the instance is frozen
        self.running.set()
        self.worker_ready = threading.Event()
        self.channel: WorkerChannel | None = None
        self._workers = itertools.count()
        self.lock = threading.RLock()
        self.pending: dict[str, WorkItem] = {}
        self.active: dict[str, WorkItem] = {}
        self.in_flight: Counter[str] = Counter()  # invocations running in the worker, by function
        self.executor = ThreadPoolExecutor(self.settings.max_concurrent, thread_name_prefix=f"{name}-work")
        self._log = open(host.logs / f"{name}.log", "ab")  # noqa: SIM115
        self.partitions = PartitionManager(self)
        self.runner = WorkRunner(self)
        self._start_worker()
        if group == "durable":
            threading.Thread(target=self.partitions.manage, name=f"{name}-partitions", daemon=True).start()

    # --- the worker process

    def _start_worker(self) -> None:
        env = {**os.environ, **self.host.app_settings}
        number = next(self._workers)
        if number:  # a slowed step stands for a fault that happened once, not in every worker
            env.pop("STANDIN_SLOW_CALLS", None)
        try:
            channel = WorkerChannel(env, self._log, f"{self.name}-worker-{number}")
        except WorkerStartFailed as error:
            log = self._log.name
            raise RuntimeError(f"{self.name}'s worker did not start: {error}; see {log}") from error
        self.channel = channel
        self.host.cold_starts.append(channel.start_seconds)
        self.worker_ready.set()

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self.channel.process if self.channel is not None else None

    def restart_worker(self) -> None:
        """What the host does after a function timeout or a worker crash: a new worker process
        (the old one's other invocations fail)."""
        with self.lock:
            if not self.worker_ready.is_set() or not self.alive:
                return
            self.worker_ready.clear()
            if self.channel is not None:
                self.channel.kill()
        self.host.stats["worker restarts"] += 1

        def start_again() -> None:
            time.sleep(self.settings.worker_restart_delay)
            if self.alive:
                self._start_worker()

        threading.Thread(target=start_again, daemon=True).start()

    def invoke(
        self,
        function: str,
        timeout: float,
        *,
        http: HttpCall | None = None,
        context: str | None = None,
        last_run: str | None = None,
    ) -> Answer:
        """Runs a function on the worker, through the worker library; the time counts only while
        the instance is not frozen."""
        while not self.worker_ready.wait(0.1):
            self.gate()
        channel = self.channel
        assert channel is not None
        info = channel.functions[function]
        client = self.host.client_binding(self)
        inputs = bindings.inputs(info, http=http, context=context, client=client, last_run=last_run)
        future = channel.invoke(info, inputs)
        self.in_flight.update([function])
        self.ran.update([function])
        future.add_done_callback(lambda _: self.in_flight.subtract([function]))
        elapsed, last = 0.0, time.monotonic()
        while True:
            try:
                return bindings.answer(future.result(timeout=0.05))
            except FutureTimeout:
                now = time.monotonic()
                if self.running.is_set() and channel is self.channel and channel.alive():
                    elapsed += now - last
                last = now
                if not self.alive:
                    raise Stopped() from None
                if elapsed > timeout:
                    self.restart_worker()  # the host restarts the worker that ran past the timeout
                    raise FunctionTimedOut() from None
            except WorkerDied as error:
                raise InvocationFailed(repr(error)) from error

    # --- freezing and dying

    def gate(self) -> None:
        """Blocks while the instance is frozen; Stopped once it is dead."""
        while not self.running.wait(0.05):
            if not self.alive:
                raise Stopped()
        if not self.alive:
            raise Stopped()

    def freeze(self) -> None:
        self.running.clear()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
        self.running.set()

    def die(self) -> None:
        """The instance is lost: nothing of it releases anything; its leases expire."""
        self.alive = False
        with self.lock:
            for partition in self.partitions.owned.values():
                partition.stop.set()
            if self.channel is not None:
                if self.channel.process.poll() is None:
                    self.channel.process.send_signal(signal.SIGCONT)
                self.channel.kill()
        self.running.set()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self._log.close()

    # --- dispatching

    def dispatch(self) -> None:
        """Starts the pending work items, one per orchestration or entity instance at a time."""
        with self.lock:
            for instance in list(self.pending):
                if instance in self.active or instance in self.host.held:
                    continue
                if len(self.active) >= self.settings.max_concurrent:
                    break
                item = self.active[instance] = self.pending.pop(instance)
                try:
                    self.executor.submit(self.runner.run, instance, item)
                except RuntimeError:  # shut down: the instance died
                    return


class DurableHost:
    """The host stand-in: a task hub, `instances` app instances, the client's RPC endpoint and an
    HTTP front door at `url`. Use as a context manager."""

    def __init__(
        self,
        app_settings: dict[str, str],
        *,
        instances: int = 2,
        http_instances: int = 1,
        settings: Settings | None = None,
        task_hub: str = "vault",
        function_key: str | None = None,
    ) -> None:
        self.settings = settings or Settings.from_host_json()
        self.app_settings = {"FUNCTIONS_WORKER_RUNTIME": "python", **app_settings}
        self.task_hub, self.function_key = task_hub, function_key
        self.hub = TaskHub(self.settings.partition_count, self.settings.storage_latency)
        self.stopping = threading.Event()
        self.stats: Counter[str] = Counter()
        self.batch_sizes: list[int] = []
        self.claims: list[tuple[float, int, str]] = []  # (monotonic time, partition, instance)
        self.events: list[str] = []
        self.errors: list[BaseException] = []
        self.cold_starts: list[float] = []  # seconds each worker took to start and index the app
        self._logs = tempfile.TemporaryDirectory(prefix="durable-host-")
        self.logs = Path(self._logs.name)
        self._names = (f"instance-{n}" for n in itertools.count())
        self._leaving: set[str] = set()
        self.held: set[str] = set()
        self._client_faults: Counter[str] = Counter()
        self._client_faults_lock = threading.Lock()
        self._next = itertools.count()
        self._scaling = threading.Condition()  # instances starting, waiting requests, HTTP slots
        self._starting_http = self._waiting_http = 0
        self._starting_durable = False
        self.calls = ThreadPoolExecutor(256, thread_name_prefix="front-door")
        self._rpc = _Server(("127.0.0.1", 0), client_api.handler(self))
        self._front = _Server(("127.0.0.1", 0), frontdoor.handler(self))
        for server in (self._rpc, self._front):
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._front.server_address[1]}/api"
        self.instances: list[AppInstance] = []
        self.functions: list[dict[str, Any]] = []  # each function's trigger, from the worker's indexing
        try:
            for _ in range(instances):
                self.add_instance()
            for _ in range(http_instances):
                self.add_instance("http")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> DurableHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.stopping.set()
        for instance in list(self.instances):
            instance.die()
        for server in (self._rpc, self._front):
            server.shutdown()
            server.server_close()
        self.calls.shutdown(wait=False, cancel_futures=True)
        self._logs.cleanup()

    def note(self, event: str) -> None:
        self.events.append(f"{time.monotonic():.3f} {event}")

    # --- scaling and faults

    def add_instance(self, group: str = "durable") -> AppInstance:
        """Scale out: a new instance of a group starts (its cold start: the worker process,
        importing and indexing the app); a Durable one takes its share of the partitions."""
        instance = AppInstance(self, next(self._names), group)
        if not self.functions and instance.channel is not None:
            self.functions = [_described(f) for f in instance.channel.functions.values()]
        self.instances.append(instance)
        self.note(f"{instance.name} ({group}) joined")
        return instance

    def live(self, group: str = "durable") -> list[AppInstance]:
        return [i for i in self.instances if i.alive and i.group == group]

    def scale_to_zero(self, group: str) -> None:
        """The group was idle long enough: the platform stops its instances (a Durable one
        releases its partitions first, as on scale-in)."""
        for instance in self.live(group):
            self.remove_instance(instance)

    def _wake_durable_group(self) -> None:
        """The scale controller sees messages in the task hub's queues while the Durable group
        has no instance (always-ready 0, after idle): it starts one, which then claims the
        partitions, as any new instance does."""
        with self._scaling:
            if self.live("durable") or self._starting_durable or self.stopping.is_set():
                return
            self._starting_durable = True

        def start() -> None:
            try:
                self.add_instance("durable")
                self.stats["durable cold starts"] += 1
            finally:
                with self._scaling:
                    self._starting_durable = False

        threading.Thread(target=start, daemon=True).start()

    # --- the HTTP group's instances

    def http_slot(self) -> AppInstance:
        """An HTTP instance with room for one more request, which the caller holds until it calls
        release_http_slot. When all are busy or there are none, a new one starts (its cold start)
        up to max_instances; past that, the request waits for a slot for up to the front end's
        limit, then TimeoutError."""
        deadline = time.monotonic() + self.settings.front_end_timeout
        with self._scaling:
            self._waiting_http += 1
            try:
                while True:
                    ready = [
                        i
                        for i in self.live("http")
                        if i.running.is_set()
                        and i.worker_ready.is_set()
                        and i.http_requests < self.settings.http_concurrency
                    ]
                    if ready:
                        chosen = min(ready, key=lambda i: i.http_requests)
                        chosen.http_requests += 1
                        return chosen
                    # The scale controller starts instances for the requests it cannot place, one
                    # for every perInstanceConcurrency of them.
                    room = len(self.live("http")) + self._starting_http < self.settings.max_instances
                    if room and self._starting_http * self.settings.http_concurrency < self._waiting_http:
                        self._starting_http += 1
                        self._scaling.release()
                        try:
                            self.add_instance("http")
                            self.stats["http cold starts"] += 1
                        finally:
                            self._scaling.acquire()
                            self._starting_http -= 1
                            self._scaling.notify_all()
                        continue
                    self._scaling.wait(timeout=max(0.0, deadline - time.monotonic()))
                    if time.monotonic() >= deadline:
                        raise TimeoutError("no HTTP instance could take the request")
            finally:
                self._waiting_http -= 1

    def release_http_slot(self, instance: AppInstance) -> None:
        with self._scaling:
            instance.http_requests -= 1
            self._scaling.notify_all()

    def leaving(self, instance: AppInstance) -> bool:
        return instance.name in self._leaving

    def remove_instance(self, instance: AppInstance) -> None:
        """Scale in: the instance drains its partitions, hands them over, then stops."""
        self._leaving.add(instance.name)
        deadline = time.monotonic() + self.settings.drain_timeout + 5 * self.settings.acquire_interval
        while time.monotonic() < deadline and any(r.owner == instance.name for r in self.hub.partitions):
            time.sleep(0.05)
        instance.die()
        self.instances.remove(instance)
        self.note(f"{instance.name} left")

    def kill(self, instance: AppInstance, *, replace: bool = True) -> AppInstance | None:
        """The instance is lost (SIGKILL, host and worker): its leases expire, its dequeued
        messages come back after the visibility timeout. `replace`: a new instance starts."""
        instance.die()
        self.instances.remove(instance)
        self.stats["instances killed"] += 1
        self.note(f"{instance.name} killed")
        return self.add_instance() if replace else None

    def freeze(self, instance: AppInstance) -> None:
        """The whole instance stops (SIGSTOP): no lease renewal, no polling, its invocations
        stand still mid-flight until `thaw`."""
        instance.freeze()
        self.stats["instances frozen"] += 1
        self.note(f"{instance.name} frozen")

    def thaw(self, instance: AppInstance) -> None:
        instance.thaw()
        self.note(f"{instance.name} thawed")

    def hang_worker(self, instance: AppInstance) -> None:
        """Only the worker process stops (SIGSTOP); its host goes on, and restarts it once an
        invocation runs past functionTimeout."""
        if instance.process is not None:
            instance.process.send_signal(signal.SIGSTOP)
        self.note(f"{instance.name}'s worker hung")

    def move_partition(self, index: int, to: AppInstance) -> None:
        """Rebalancing: `to` asks for the partition; its owner drains it and hands it over."""
        with self.hub.lock:
            row = self.hub.partitions[index]
            if row.owner not in (None, to.name):
                row.next_owner = to.name
        self.note(f"partition {index} asked for by {to.name}")

    def signal(self, entity_instance: str, operation: str, input_text: str | None) -> None:
        """An operation for an entity from outside any orchestration (a client's signal): no
        answer goes back, and nothing orders or deduplicates it."""
        request = {"op": operation, "signal": True, "input": input_text, "id": str(uuid.uuid4())}
        self.send(None, [(entity_instance, {"kind": "request", "request": request}, 0.0)])

    @contextlib.contextmanager
    def holding(self, instance_id: str) -> Iterator[None]:
        """Holds back an instance's work items (its queue backed up) until the block ends."""
        self.held.add(instance_id)
        try:
            yield
        finally:
            self.held.discard(instance_id)
            for instance in self.live():
                instance.dispatch()

    def settle(self, timeout: float = 60.0) -> None:
        """Waits until the partitions are shared out: each owned, none being handed over, and every
        live instance holding its share."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.hub.lock:
                rows = self.hub.partitions
                counts = Counter(r.owner for r in rows)
                shares = [counts[i.name] for i in self.live()]
                if all(r.owner and r.next_owner is None for r in rows) and max(shares) - min(shares) <= 1:
                    return
            time.sleep(0.05)
        raise TimeoutError("the partitions did not settle")

    def owner_of(self, instance_id: str) -> AppInstance | None:
        row = self.hub.partitions[p.partition_of(instance_id, self.settings.partition_count)]
        return next((i for i in self.instances if i.name == row.owner), None)

    # --- what the extension does for the app

    def entity_function(self, name: str) -> str:
        return next(
            f["name"] for f in self.functions if f["trigger"] == "entityTrigger" and f["name"].lower() == name
        )

    def client_binding(self, instance: AppInstance) -> str:
        rpc = f"http://127.0.0.1:{self._rpc.server_address[1]}/{instance.name}/durabletask/"
        return p.client_binding(rpc, self.task_hub)

    def send(self, sender: AppInstance | None, messages: list[tuple[str, dict[str, Any], float]]) -> None:
        """Enqueues messages (target, event, delay) in parallel, as DTFx does; those over the
        queue limit cost a blob round trip more (Azure stores them compressed in the
        large-messages container)."""
        sized = [(target, event, len(json.dumps(event).encode()), delay) for target, event, delay in messages]
        spilled = sum(size > p.QUEUE_MESSAGE_LIMIT for _, _, size, _ in sized)
        if spilled:
            self.hub.spilled += spilled
            self.hub.round_trip(*["blob put"] * spilled)
        partitions = self.hub.enqueue(sized)
        self._wake_durable_group()
        if sender is not None:
            for partition, (_, _, _, delay) in zip(partitions, sized, strict=True):
                if not delay:
                    sender.partitions.wake(partition)

    def start(
        self, caller: AppInstance | None, name: str, instance_id: str, input_text: str | None
    ) -> str | None:
        """Creates an orchestration instance and sends its start; None, or the status of the
        instance with that id that is still pending or running (a start is refused then)."""
        if input_text is not None and p.table_bytes(input_text) > p.TABLE_PROPERTY_LIMIT:
            self.hub.spilled += 1
            self.hub.round_trip("blob put")
        execution = uuid.uuid4().hex
        record = Record(instance_id, name, input_text=input_text, execution_id=execution)
        blocking = self.hub.create(record, replace_finished=True)
        if blocking is not None:
            return blocking
        started = p.history_event(
            p.EXECUTION_STARTED,
            datetime.now(UTC),
            Name=name,
            Version="",
            Input=input_text,
            OrchestrationInstance={"InstanceId": instance_id, "ExecutionId": execution},
        )
        self.send(caller, [(instance_id, started, 0.0)])
        return None

    @contextlib.contextmanager
    def fail_client_calls(self, **calls: int) -> Iterator[None]:
        """The extension's HTTP API fails the next `start`, `status` or `purge` calls of the
        durable client (as many of each as given), as when its storage throws."""
        with self._client_faults_lock:
            self._client_faults.update(calls)
        try:
            yield
        finally:
            with self._client_faults_lock:
                self._client_faults.clear()

    def take_client_fault(self, call: str) -> bool:
        with self._client_faults_lock:
            if self._client_faults[call] <= 0:
                return False
            self._client_faults[call] -= 1
            return True

    def purge(self, created_from: datetime, created_to: datetime, statuses: list[str]) -> int:
        """The extension's purge by time: only terminal statuses filter; none means everything
        created in the window, running orchestrations and entities included."""
        wanted = [s for s in statuses if s in TERMINAL]
        with self.hub.lock:
            chosen = [
                r.instance
                for r in self.hub.records.values()
                if created_from.timestamp() <= r.created <= created_to.timestamp()
                and (not wanted or r.status in wanted)
            ]
        return self.hub.purge(chosen)

    def run_timer(self, function: str, last_run: datetime | None = None) -> Answer:
        """Runs a timer-triggered function now, on an instance of its own group (started if there
        is none, as the platform does when the timer fires); `last_run`: when it last ran."""
        group = f"function:{function}"
        instances = self.live(group) or [self.add_instance(group)]
        last = None if last_run is None else last_run.isoformat()
        return instances[0].invoke(function, self.settings.function_timeout, last_run=last)

    # --- observations

    def entity_batch_mean(self) -> float:
        return sum(self.batch_sizes) / len(self.batch_sizes) if self.batch_sizes else 0.0

    def record(self, instance_id: str) -> Record | None:
        return self.hub.peek(instance_id)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A caller that died mid-request (a killed worker) is expected here, not an error."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _described(function: FunctionInfo) -> dict[str, Any]:
    """A function's trigger, as the host learns it from the worker's indexing."""
    trigger = function.trigger
    return {
        "name": function.name,
        "trigger": trigger["type"],
        "route": trigger.get("route"),
        "methods": trigger.get("methods"),
        "authLevel": trigger.get("authLevel"),
    }
