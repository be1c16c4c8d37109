"""Running a work item as the Durable extension does: an orchestration episode (replay the
history, run the orchestrator, turn its actions into messages and timers) or an entity batch
(the message sorter, at most maxEntityOperationBatchSize operations, one invocation), then DTFx's
checkpoint (outbound messages first, then the state if its ETag still matches, then the inputs
deleted)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tests.support.durable import protocol as p
from tests.support.durable.bindings import Answer
from tests.support.durable.taskhub import QueueMessage, Record

if TYPE_CHECKING:
    from tests.support.durable.host import AppInstance

TERMINAL = ("Completed", "Failed", "Terminated")


class InvocationFailed(Exception):
    """The worker could not run the invocation (it died, or answered nonsense)."""


class FunctionTimedOut(Exception):
    """The invocation ran past functionTimeout."""


class Stopped(Exception):
    """This instance is dead: its threads stop without touching storage."""


@dataclass
class WorkItem:
    """The messages of one orchestration or entity instance, dequeued from one partition."""

    partition: int
    messages: list[QueueMessage]


class WorkRunner:
    """Runs one instance's work items, each on a thread of its executor."""

    def __init__(self, instance: AppInstance) -> None:
        self.instance, self.host, self.settings = instance, instance.host, instance.settings

    def run(self, instance: str, item: WorkItem) -> None:
        hub = self.host.hub
        try:
            self.instance.gate()
            if item.partition not in self.instance.partitions.owned:  # released meanwhile: abandon
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
            self.host.note(f"{self.instance.name}: {instance} aborted: {error!r}")
            if self.instance.alive:
                hub.release(item.messages)
        except Exception as error:  # a defect of the stand-in: make it loud
            self.host.note(f"{self.instance.name}: {instance} crashed the dispatcher: {error!r}")
            self.host.errors.append(error)
            if self.instance.alive:
                hub.release(item.messages)
        finally:
            with self.instance.lock:
                if self.instance.active.get(instance) is item:
                    del self.instance.active[instance]
            if self.instance.alive:
                self.instance.dispatch()

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
        self.instance.gate()
        if outbound:
            self.host.send(self.instance, outbound)
        self.instance.gate()
        if not self.host.hub.save(record, loaded_etag, history_bytes):
            self.host.stats["split-brain checkpoints refused"] += 1
            self.host.hub.release(inputs)
            return False
        self.instance.gate()
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
        reply = self.instance.invoke(record.name, self.settings.function_timeout, context=context)
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
                reply = self.instance.invoke(function, self.settings.function_timeout, context=context)
                outcome = json.loads(reply.result) if reply.result is not None else None
                if outcome is None or len(outcome.get("results", [])) != len(batch):
                    raise InvocationFailed(reply.error or "a result per operation was expected")
                results = [(r["result"], r["isError"]) for r in outcome["results"]]
                record.exists, record.state = outcome["entityExists"], outcome["entityState"]
            except FunctionTimedOut:
                # The extension answers every operation of the batch with the host's timeout
                # error and keeps the state from before the batch; the host restarts the worker.
                self.host.stats["entity batches timed out"] += 1
                timed_out = p.timeout_message(self.settings.function_timeout, function)
                results = [(timed_out, True) for _ in batch]
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
