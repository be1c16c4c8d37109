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

Times such as lease and visibility timeouts can be scaled down for tests (Settings); everything
else follows the app's host.json.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import re
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
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.support import ROOT
from tests.support.durable import bindings, client_api, frontdoor
from tests.support.durable import protocol as p
from tests.support.durable.bindings import Answer, HttpCall
from tests.support.durable.channel import FunctionInfo, WorkerChannel, WorkerDied, WorkerStartFailed
from tests.support.durable.taskhub import QueueMessage, Record, TaskHub

TERMINAL = ("Completed", "Failed", "Terminated")


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


class InvocationFailed(Exception):
    """The worker could not run the invocation (it died, or answered nonsense)."""


class FunctionTimedOut(Exception):
    """The invocation ran past functionTimeout."""


class Stopped(Exception):
    """This instance is dead: its threads stop without touching storage."""


class Backoff:
    """DTFx's queue polling backoff: no wait at first, then 50 ms + (0.8-1.2) x 2^(n-1) x 50 ms
    per empty poll, at most `maximum`; reset by any dequeue or local enqueue."""

    def __init__(self, maximum: float) -> None:
        self.maximum, self.empty_polls = maximum, 0
        self.wake = threading.Event()

    def wait(self) -> None:
        if self.empty_polls:
            delay = 0.05 + random.uniform(0.8, 1.2) * 2 ** (self.empty_polls - 1) * 0.05
            self.wake.wait(min(delay, self.maximum))
            self.wake.clear()
        self.empty_polls += 1

    def reset(self) -> None:
        self.empty_polls = 0
        self.wake.set()


@dataclass
class WorkItem:
    partition: int
    messages: list[QueueMessage]


@dataclass
class Partition:
    """A partition this instance owns and polls."""

    index: int
    stop: threading.Event = field(default_factory=threading.Event)
    backoff: Backoff | None = None
    draining: bool = False


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
        self.owned: dict[int, Partition] = {}
        self.pending: dict[str, WorkItem] = {}
        self.active: dict[str, WorkItem] = {}
        self.in_flight: Counter[str] = Counter()  # invocations running in the worker, by function
        self.executor = ThreadPoolExecutor(self.settings.max_concurrent, thread_name_prefix=f"{name}-work")
        self._log = open(host.logs / f"{name}.log", "ab")  # noqa: SIM115
        self._start_worker()
        if group == "durable":
            threading.Thread(target=self._manage_partitions, name=f"{name}-partitions", daemon=True).start()

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
            for partition in self.owned.values():
                partition.stop.set()
            if self.channel is not None:
                if self.channel.process.poll() is None:
                    self.channel.process.send_signal(signal.SIGCONT)
                self.channel.kill()
        self.running.set()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self._log.close()

    # --- partitions (the table partition manager)

    def _manage_partitions(self) -> None:
        try:
            while self.alive and not self.host.stopping.is_set():
                self.gate()
                waiting = self._balance()
                self._renew_active()
                interval = self.settings.acquire_interval
                self.host.stopping.wait(min(interval, 1.0) if waiting else interval)
        except Stopped:
            pass

    def _balance(self) -> bool:
        """One pass of the partition manager; True while it waits for a partition or drains."""
        hub, now, waiting = self.host.hub, time.monotonic(), False
        hub.round_trip("table read", "table write")  # the partition table: read, then renew
        with hub.lock:
            rows = hub.partitions
            for index in list(self.owned):
                if rows[index].owner != self.name:  # lost it (expired and claimed elsewhere)
                    self._stop_polling(index)
            for index, row in enumerate(rows):
                if row.owner == self.name:
                    row.expires_at = now + self.settings.lease_interval  # renewed, draining or not
                    if row.next_owner not in (None, self.name) or self.host.leaving(self):
                        waiting = True
                        self._drain(index)
                elif (row.owner is None and row.next_owner in (None, self.name)) or row.expires_at <= now:
                    # Free for us, or its lease ran out: the owner stopped renewing, or the one who
                    # asked for it never came to take it.
                    if self.host.leaving(self):
                        continue
                    row.owner, row.next_owner = self.name, None
                    row.expires_at = now + 2 * self.settings.lease_interval
                    self.host.claims.append((now, index, self.name))
                    self._start_polling(index)
            if self.host.leaving(self):
                return True
            live = {r.owner for r in rows if r.owner and r.expires_at > now} | {self.name}
            mine = sum(r.owner == self.name for r in rows)
            average = len(rows) // len(live)
            counts = Counter(r.owner for r in rows if r.owner)
            if mine < average and not any(r.next_owner == self.name for r in rows):
                for row in rows:
                    if row.owner != self.name and row.next_owner is None and counts[row.owner] > average:
                        row.next_owner = self.name  # ask the owner to hand it over
                        waiting = True
                        break
            return waiting or any(r.next_owner == self.name for r in rows)

    def _start_polling(self, index: int) -> None:
        partition = Partition(index, backoff=Backoff(self.settings.max_polling_interval))
        self.owned[index] = partition
        threading.Thread(
            target=self._poll, args=(partition,), name=f"{self.name}-poll-{index}", daemon=True
        ).start()

    def _stop_polling(self, index: int) -> list[QueueMessage]:
        """Stops polling a partition; returns the prefetched messages nobody started on."""
        partition = self.owned.pop(index, None)
        if partition is not None:
            partition.stop.set()
        with self.lock:
            dropped = [item for key, item in self.pending.items() if item.partition == index]
            for key in [key for key, item in self.pending.items() if item.partition == index]:
                del self.pending[key]
        return [m for item in dropped for m in item.messages]

    def _drain(self, index: int) -> None:
        partition = self.owned.get(index)
        if partition is None or partition.draining:
            return
        partition.draining = True
        threading.Thread(target=self._release, args=(index,), daemon=True).start()

    def _release(self, index: int) -> None:
        """Drains a partition (stop dequeuing, wait for its running work items, at most
        drain_timeout), then releases its lease. Prefetched batches are abandoned."""
        try:
            abandoned = self._stop_polling(index)
            self.host.hub.release(abandoned)
            deadline = time.monotonic() + self.settings.drain_timeout
            while time.monotonic() < deadline:
                self.gate()
                with self.lock:
                    if not any(item.partition == index for item in self.active.values()):
                        break
                time.sleep(0.05)
            self.gate()
            with self.host.hub.lock:
                row = self.host.hub.partitions[index]
                if row.owner == self.name:
                    row.owner = None
            self.host.stats["partition moves"] += 1
        except Stopped:
            pass

    def _renew_active(self) -> None:
        """The dispatcher keeps the messages of running work items hidden."""
        with self.lock:
            messages = [m for item in self.active.values() for m in item.messages]
        self.host.hub.renew(messages, self.settings.visibility_timeout)

    # --- polling and dispatching

    def _poll(self, partition: Partition) -> None:
        hub = self.host.hub
        assert partition.backoff is not None
        try:
            while not partition.stop.is_set() and not self.host.stopping.is_set():
                self.gate()
                with self.lock:
                    buffered = sum(len(item.messages) for item in self.pending.values())
                if buffered >= self.settings.buffer_threshold:
                    partition.stop.wait(1.0)
                    continue
                messages = hub.dequeue(
                    partition.index, self.settings.control_queue_batch_size, self.settings.visibility_timeout
                )
                if partition.stop.is_set():
                    hub.release(messages, delay=0)
                    return
                if messages:
                    partition.backoff.empty_polls = 0
                    with self.lock:
                        for message in messages:
                            item = self.pending.setdefault(message.instance, WorkItem(partition.index, []))
                            item.messages.append(message)
                    self.dispatch()
                else:
                    partition.backoff.wait()
        except Stopped:
            pass

    def wake(self, index: int) -> None:
        """A message this instance enqueued to a partition it polls wakes that poller at once."""
        partition = self.owned.get(index)
        if partition is not None and partition.backoff is not None:
            partition.backoff.reset()

    def dispatch(self) -> None:
        with self.lock:
            for instance in list(self.pending):
                if instance in self.active or instance in self.host.held:
                    continue
                if len(self.active) >= self.settings.max_concurrent:
                    break
                item = self.active[instance] = self.pending.pop(instance)
                try:
                    self.executor.submit(self._run, instance, item)
                except RuntimeError:  # shut down: the instance died
                    return

    def _run(self, instance: str, item: WorkItem) -> None:
        hub = self.host.hub
        try:
            self.gate()
            if item.partition not in self.owned:  # released meanwhile: abandon
                hub.release(item.messages)
                return
            if instance.startswith("@"):
                self._entity(instance, item.messages)
            else:
                self._orchestration(instance, item.messages)
        except Stopped:
            pass
        except (InvocationFailed, FunctionTimedOut) as error:
            self.host.stats["aborted work items"] += 1
            self.host.note(f"{self.name}: {instance} aborted: {error!r}")
            if self.alive:
                hub.release(item.messages)
        except Exception as error:  # a defect of the stand-in: make it loud
            self.host.note(f"{self.name}: {instance} crashed the dispatcher: {error!r}")
            self.host.errors.append(error)
            if self.alive:
                hub.release(item.messages)
        finally:
            with self.lock:
                if self.active.get(instance) is item:
                    del self.active[instance]
            if self.alive:
                self.dispatch()

    def _checkpoint(
        self,
        record: Record,
        loaded_etag: int | None,
        outbound: list[tuple[str, dict[str, Any], float]],
        inputs: list[QueueMessage],
        history_bytes: int = 0,
    ) -> bool:
        """DTFx's order: outbound messages first (they are never taken back), then the state if its
        ETag still matches (the checkpoint), then the inputs are deleted."""
        self.gate()
        if outbound:
            self.host.send(self, outbound)
        self.gate()
        if not self.host.hub.save(record, loaded_etag, history_bytes):
            self.host.stats["split-brain checkpoints refused"] += 1
            self.host.hub.release(inputs)
            return False
        self.gate()
        self.host.hub.delete(inputs)
        return True

    # --- orchestrations

    def _orchestration(self, instance: str, messages: list[QueueMessage]) -> None:
        hub = self.host.hub
        record = hub.load(instance)
        if record is None or record.status in TERMINAL:  # purged or finished: late messages
            hub.delete(messages)
            return
        loaded_etag = record.etag
        sent = {json.loads(e["Input"])["id"] for e in record.history if e["EventType"] == p.EVENT_SENT}
        new_events, handled, out_of_order = [], [], []
        for message in messages:
            event = message.event
            if event["EventType"] == p.EXECUTION_STARTED and (
                record.history or event["OrchestrationInstance"]["ExecutionId"] != record.execution_id
            ):
                handled.append(message)  # a duplicate or stale start
                continue
            if event["EventType"] == p.EVENT_RAISED and event["Name"] not in sent:
                out_of_order.append(message)  # its EventSent is not checkpointed yet
                continue
            handled.append(message)
            new_events.append(event)
        hub.release(out_of_order)
        if not new_events:
            hub.delete(handled)
            return
        now = datetime.now(UTC)
        played = len(record.history)
        history = [{**e, "IsPlayed": True} for e in record.history]
        history += [
            p.history_event(p.ORCHESTRATOR_STARTED, now),
            *({**e, "IsPlayed": False} for e in new_events),
        ]
        context = p.orchestration_context(instance, history, record.input_text)
        reply = self.invoke(record.name, self.settings.function_timeout, context=context)
        state = _orchestrator_state(reply)
        if state is None:
            raise InvocationFailed(reply.error or "no result")
        actions = [a for group in state.get("actions", []) for a in group]
        scheduled = sum(e["EventType"] in (p.EVENT_SENT, p.TIMER_CREATED) for e in history)
        outbound: list[tuple[str, dict[str, Any], float]] = []
        for seq, action in enumerate(actions[scheduled:], start=scheduled):
            kind = action["actionType"]
            if kind in (p.CALL_ENTITY, p.SIGNAL_ENTITY):
                request = {
                    "op": action["operation"],
                    "signal": kind == p.SIGNAL_ENTITY,
                    "input": None if action.get("input") is None else json.dumps(action["input"]),
                    # The extension's request ids are deterministic: a replayed episode sends the same.
                    "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{instance}/{record.execution_id}/{seq}")),
                    "parent": instance,
                    "parentExecution": record.execution_id,
                    "timestamp": now.timestamp(),  # the episode's time, the same on redelivery
                }
                history.append(
                    p.history_event(
                        p.EVENT_SENT,
                        now,
                        seq,
                        InstanceId=action["instanceId"],
                        Name="op",
                        Input=json.dumps(request),
                    )
                )
                outbound.append((action["instanceId"], {"kind": "request", "request": request}, 0.0))
            elif kind == p.CREATE_TIMER:
                fire_at = p.parse_timestamp(action["fireAt"])
                history.append(p.history_event(p.TIMER_CREATED, now, seq, FireAt=action["fireAt"]))
                fired = p.history_event(p.TIMER_FIRED, now, -1, TimerId=seq, FireAt=action["fireAt"])
                outbound.append((instance, fired, max(0.0, (fire_at - now).total_seconds())))
            else:
                raise NotImplementedError(f"action type {kind} is not modelled")
        history.append(p.history_event(p.ORCHESTRATOR_COMPLETED, now))
        record.history = history
        record.custom_status = state.get("customStatus")
        if state.get("error"):
            record.status, record.output = "Failed", state["error"]
        elif state.get("isDone"):
            record.status, record.output = "Completed", state.get("output")
        else:
            record.status = "Running"
        written = len(json.dumps(history[played:]).encode())  # the new History rows
        self._checkpoint(record, loaded_etag, outbound, handled, written)

    # --- entities

    def _entity(self, instance: str, messages: list[QueueMessage]) -> None:
        hub = self.host.hub
        _, name, key = instance.split("@", 2)
        record = hub.load(instance)
        loaded_etag = record.etag if record is not None else None
        if record is None:
            record = Record(instance, name, status="Running")
        window = self.settings.reorder_window
        for message in messages:
            event = message.event
            if event.get("kind") != "request":
                continue  # "continue": run what is queued
            request = event["request"]
            parent = request.get("parent")
            if parent and window > 0:  # the message sorter (signals from clients bypass it)
                stamp = request["timestamp"]
                if stamp <= record.received.get(parent, float("-inf")):
                    self.host.stats["duplicate requests dropped"] += 1
                    continue
                record.received[parent] = stamp
                if stamp > record.horizon + window + 10:
                    record.horizon = stamp - window
                    record.received = {k: v for k, v in record.received.items() if v >= record.horizon}
            record.queue.append(request)
        batch, record.queue = (
            record.queue[: self.settings.max_entity_batch],
            record.queue[self.settings.max_entity_batch :],
        )
        outbound: list[tuple[str, dict[str, Any], float]] = []
        if batch:
            function = self.host.entity_function(name)
            context = p.entity_batch(name, key, record.exists, record.state, batch)
            try:
                reply = self.invoke(function, self.settings.function_timeout, context=context)
                outcome = json.loads(reply.result) if reply.result is not None else None
                if outcome is None or len(outcome.get("results", [])) != len(batch):
                    raise InvocationFailed(reply.error or "a result per operation was expected")
                results = [(r["result"], r["isError"]) for r in outcome["results"]]
                record.exists, record.state = outcome["entityExists"], outcome["entityState"]
            except FunctionTimedOut:
                # The extension answers every operation of the batch with the host's timeout
                # error and keeps the state from before the batch; the host restarts the worker.
                self.host.stats["entity batches timed out"] += 1
                message = p.timeout_message(self.settings.function_timeout, function)
                results = [(message, True) for _ in batch]
            self.host.stats["entity invocations"] += 1
            self.host.stats["entity operations"] += len(batch)
            self.host.batch_sizes.append(len(batch))
            when = datetime.now(UTC)
            for request, (result, is_error) in zip(batch, results, strict=True):
                if request.get("signal"):
                    continue
                response: dict[str, Any] = {"result": result}
                if is_error:
                    response["exceptionType"] = "Error"
                raised = p.history_event(p.EVENT_RAISED, when, Name=request["id"], Input=json.dumps(response))
                outbound.append((request["parent"], raised, 0.0))
        if record.queue:
            outbound.append((instance, {"kind": "continue"}, 0.0))
        self._checkpoint(record, loaded_etag, outbound, messages)


def _orchestrator_state(reply: Answer) -> dict[str, Any] | None:
    """The orchestrator's answer: its JSON result, or, when its code raised, the state the SDK
    appends to the error message (as the extension's OutOfProcOrchestrationShim reads it)."""
    if reply.result is not None:
        return json.loads(reply.result)
    marker = "\n\n$OutOfProcData$:"
    error = reply.error or ""
    if marker in error:
        message, _, data = error.partition(marker)
        state = json.loads(data)
        state["error"] = message
        return state
    return None


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
                    sender.wake(partition)

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
