"""The shapes that cross between the Durable extension and the Python worker, as read from
Azure/azure-functions-durable-extension (OrchestratorShim protocol, used for Python), DTFx and the
Durable Python SDK: the durable client binding, the orchestration and entity trigger payloads,
history events, entity request and response messages, and how instance ids map to partitions."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

# DTFx HistoryEventType values (the numbers the SDK's HistoryEventType uses).
EXECUTION_STARTED, TIMER_CREATED, TIMER_FIRED = 0, 10, 11
ORCHESTRATOR_STARTED, ORCHESTRATOR_COMPLETED, EVENT_SENT, EVENT_RAISED = 12, 13, 14, 15
# The SDK's ActionType values.
CREATE_TIMER, CALL_ENTITY, SIGNAL_ENTITY = 5, 7, 9
QUEUE_MESSAGE_LIMIT = 45 * 1024  # DTFx MessageManager: larger queue messages go to a blob
TABLE_PROPERTY_LIMIT = 60 * 1024  # AzureTableTrackingStore: in UTF-16 bytes, larger ones go to a blob


def table_bytes(text: str) -> int:
    """A table property's size as the tracking store measures it against TABLE_PROPERTY_LIMIT."""
    return len(text.encode("utf-16-le"))


def partition_of(instance_id: str, partition_count: int) -> int:
    """DTFx AzureStorage: 32-bit FNV-1a over the UTF-8 bytes of the whole instance id."""
    value = 2166136261
    for byte in instance_id.encode():
        value = ((value ^ byte) * 16777619) & 0xFFFFFFFF
    return value % partition_count


def entity_instance_id(name: str, key: str) -> str:
    return f"@{name.lower()}@{key}"


def timestamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_timestamp(text: str) -> datetime:
    return datetime.strptime(text.rstrip("Z")[:26], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=UTC)


def history_event(event_type: int, when: datetime, event_id: int = -1, **fields: Any) -> dict[str, Any]:
    event = {"EventType": event_type, "EventId": event_id, "IsPlayed": False, "Timestamp": timestamp(when)}
    event.update(fields)
    return event


def client_binding(rpc_base_url: str, task_hub: str) -> str:
    """The string the extension passes for a durableClient input binding."""
    base = "http://localhost:7071/runtime/webhooks/durabletask"
    create = f"{base}/orchestrators/{{functionName}}[/{{instanceId}}]"
    query = f"taskHub={task_hub}&connection=Storage&code=SYSKEY"
    instance = f"{base}/instances/INSTANCEID"
    return json.dumps(
        {
            "taskHubName": task_hub,
            "creationUrls": {
                "createNewInstancePostUri": f"{create}?code=SYSKEY",
                "createAndWaitOnNewInstancePostUri": (
                    f"{create}?timeout={{timeoutInSeconds}}&pollingInterval={{intervalInSeconds}}&code=SYSKEY"
                ),
            },
            "managementUrls": {
                "id": "INSTANCEID",
                "statusQueryGetUri": f"{instance}?{query}",
                "sendEventPostUri": f"{instance}/raiseEvent/{{eventName}}?{query}",
                "terminatePostUri": f"{instance}/terminate?reason={{text}}&{query}",
                "rewindPostUri": f"{instance}/rewind?reason={{text}}&{query}",
                "purgeHistoryDeleteUri": f"{instance}?{query}",
                "restartPostUri": f"{instance}/restart?{query}",
                "suspendPostUri": f"{instance}/suspend?reason={{text}}&{query}",
                "resumePostUri": f"{instance}/resume?reason={{text}}&{query}",
            },
            "baseUrl": base,
            "requiredQueryStringParameters": "code=SYSKEY",
            "rpcBaseUrl": rpc_base_url,  # ends with '/'
            "httpBaseUrl": "",
            "connectionName": None,
        }
    )


def orchestration_context(instance_id: str, history: list[dict[str, Any]], input_text: str | None) -> str:
    """What the OrchestrationTrigger binding sends: the whole history (Python has no extended
    sessions, so every episode replays from the start) and the input as the client's JSON text."""
    return json.dumps(
        {
            "history": history,
            "input": input_text,
            "instanceId": instance_id,
            "isReplaying": any(event["IsPlayed"] for event in history),
            "parentInstanceId": None,
            "upperSchemaVersion": 1,  # SchemaVersion.V2
            "upperSchemaVersionNew": 2,  # SchemaVersion.V3, what current extensions send
            "maximumShortTimerDuration": "6.00:00:00",
            "longRunningTimerIntervalDuration": "3.00:00:00",
            "defaultHttpAsyncRequestSleepTimeMillseconds": 30000,
        }
    )


def entity_batch(
    name: str, key: str, exists: bool, state: str | None, operations: list[dict[str, Any]]
) -> str:
    """What the EntityTrigger binding sends: exactly these keys (the SDK refuses any other), the
    state as the JSON text the entity returned last time, and per operation its name, its input
    (the caller's JSON text, serialized once more as a JSON string) and whether it is a signal."""
    batch = [
        {"name": op["op"], "input": op.get("input"), "isSignal": op.get("signal", False)} for op in operations
    ]
    return json.dumps(
        {"self": {"name": name.lower(), "key": key}, "exists": exists, "state": state, "batch": batch}
    )


def net_time(seconds: float | None) -> str:
    """A time as the extension's serializer writes a DateTime (seven fractional digits)."""
    if not seconds:
        return "0001-01-01T00:00:00"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


def request_message(request: dict[str, Any]) -> dict[str, Any]:
    """A queued entity request as the extension serializes it (RequestMessage): values left at
    their defaults are omitted, but for the operation name and the two ordering times."""
    message: dict[str, Any] = {"op": request["op"]}
    if request.get("signal"):
        message["signal"] = True
    if request.get("input") is not None:
        message["input"] = request["input"]
    message["id"] = request["id"]
    if request.get("parent"):
        message["parent"] = request["parent"]
        message["parentExecution"] = request.get("parentExecution")
    message["Timestamp"] = net_time(request.get("timestamp"))
    message["Predecessor"] = net_time(None)
    return message


def scheduler_state(record: Any) -> str:
    """What the extension saves for an entity after each batch (TaskEntityShim's SchedulerState,
    default values left out): whether it exists, its state as the JSON text the app returned, the
    requests still queued, and the message sorter, which remembers the last request time of every
    orchestration that called it within the reorder window."""
    state: dict[str, Any] = {}
    if record.exists:
        state["exists"] = True
    if record.state is not None:
        state["state"] = record.state
    if record.queue:
        state["queue"] = [request_message(request) for request in record.queue]
    sorter: dict[str, Any] = {}
    if record.received:
        sorter["ReceivedFromInstance"] = {
            parent: {"Last": net_time(last)} for parent, last in record.received.items()
        }
        sorter["ReceiveHorizon"] = net_time(record.horizon)
    state["sorter"] = sorter
    return json.dumps(state, separators=(",", ":"))


def timeout_message(function_timeout: float, function: str) -> str:
    """The text the Functions host gives every operation of an entity batch that timed out."""
    seconds = int(function_timeout)
    span = f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    return f"Timeout value of {span} was exceeded by function: Functions.{function}"
