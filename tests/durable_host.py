"""Test-only stand-in for the Durable Functions *host* (extension), never for app/SDK code.

It does three things the real host does, using the shapes read from
Azure/azure-functions-durable-extension (OrchestratorShim protocol, used for Python):

* builds the JSON payloads the host hands to the Python worker
  (durable client binding string, orchestration context, entity batch context);
* runs a local HTTP "RPC endpoint" on 127.0.0.1 (the extension's LocalHttpListener,
  normally http://127.0.0.1:17071/durabletask/) for the client SDK's calls;
* dispatches messages: start orchestration -> replay orchestrator handle -> for each
  CallEntity action, record EventSent, run an entity batch through the entity handle,
  record EventRaised with the ResponseMessage, replay again until isDone.

The orchestrator/entity handles are the app's own (app.get_functions()[..].get_user_function()),
invoked with azure.functions.OrchestrationContext / EntityContext exactly like the worker does.
"""

import json
import queue
import threading
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

import azure.functions as func

# DTFx HistoryEventType values (same numbers as azure.durable_functions HistoryEventType)
EXECUTION_STARTED, ORCHESTRATOR_STARTED, ORCHESTRATOR_COMPLETED = 0, 12, 13
EVENT_SENT, EVENT_RAISED = 14, 15
CALL_ENTITY, SIGNAL_ENTITY = 7, 9

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def ts(dt: datetime) -> str:
    # '%Y-%m-%dT%H:%M:%S.%fZ' like the SDK's own tests; keep ALL timestamps tz-aware
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ------------------------------------------------------------------ payload builders
def client_binding_json(
    rpc_base_url: str, task_hub: str = "TestHub", public_base: str = "http://localhost:7071"
) -> str:
    """The string the host passes for a durableClient input binding."""
    base = f"{public_base}/runtime/webhooks/durabletask"
    q = f"taskHub={task_hub}&connection=Storage&code=SYSKEY"
    inst = f"{base}/instances/INSTANCEID"
    return json.dumps(
        {
            "taskHubName": task_hub,
            "creationUrls": {
                "createNewInstancePostUri": (
                    f"{base}/orchestrators/{{functionName}}[/{{instanceId}}]?code=SYSKEY"
                ),
                "createAndWaitOnNewInstancePostUri": (
                    f"{base}/orchestrators/{{functionName}}[/{{instanceId}}]"
                    "?timeout={timeoutInSeconds}&pollingInterval={intervalInSeconds}&code=SYSKEY"
                ),
            },
            "managementUrls": {
                "id": "INSTANCEID",
                "statusQueryGetUri": f"{inst}?{q}",
                "sendEventPostUri": f"{inst}/raiseEvent/{{eventName}}?{q}",
                "terminatePostUri": f"{inst}/terminate?reason={{text}}&{q}",
                "rewindPostUri": f"{inst}/rewind?reason={{text}}&{q}",
                "purgeHistoryDeleteUri": f"{inst}?{q}",
                "restartPostUri": f"{inst}/restart?{q}",
                "suspendPostUri": f"{inst}/suspend?reason={{text}}&{q}",
                "resumePostUri": f"{inst}/resume?reason={{text}}&{q}",
            },
            "baseUrl": base,
            "requiredQueryStringParameters": "code=SYSKEY",
            "rpcBaseUrl": rpc_base_url,  # must end with '/'
            "httpBaseUrl": "",
            "connectionName": None,
        }
    )


def history_event(
    event_type: int, when: datetime, event_id: int = -1, is_played: bool = False, **fields
) -> dict:
    ev = {"EventType": event_type, "EventId": event_id, "IsPlayed": is_played, "Timestamp": ts(when)}
    ev.update(fields)
    return ev


def orchestration_context_json(instance_id: str, history: list, input_text) -> str:
    """What the extension's OrchestrationTrigger binding sends (OrchestrationContextToString).

    `input_text` is the orchestration input as the *JSON text* the client serialized
    (the host passes it as a JSON string token; the SDK df_loads() it).
    """
    return json.dumps(
        {
            "history": history,
            "input": input_text,
            "instanceId": instance_id,
            "isReplaying": any(e["IsPlayed"] for e in history),
            "parentInstanceId": None,
            "upperSchemaVersion": 1,  # SchemaVersion.V2
            "upperSchemaVersionNew": 2,  # SchemaVersion.V3 (what current extensions send)
            "longRunningTimerIntervalDuration": None,
            "maximumShortTimerDuration": None,
            "defaultHttpAsyncRequestSleepTimeMillseconds": 30000,
        }
    )


def entity_batch_json(name: str, key: str, exists: bool, state, batch: list) -> str:
    """What the extension's EntityTrigger binding sends (EntityContextToString).

    `state` is the *serialized* state string the entity returned last time (or None).
    Each batch item: {"name": op, "input": <JSON-encoded string of the SDK-serialized
    input, i.e. serialized twice> or None, "isSignal": bool}.
    """
    return json.dumps({"self": {"name": name, "key": key}, "exists": exists, "state": state, "batch": batch})


def batch_op(name: str, sdk_input_text=None, is_signal=False) -> dict:
    # RequestMessage.Input is the SDK's df_dumps text, JSON-serialized once more by the host.
    return {
        "name": name,
        "input": None if sdk_input_text is None else json.dumps(sdk_input_text),
        "isSignal": is_signal,
    }


# ------------------------------------------------------------------ the fake host
class Instance:
    def __init__(self, name, instance_id, input_text):
        self.name, self.id, self.input_text = name, instance_id, input_text
        self.status = "Pending"
        self.output = None
        self.custom_status = None
        self.history = []
        self.actions_done = 0
        self.pending = {}  # request guid -> True
        now = datetime.now(UTC)
        self.created = self.updated = now


class FakeDurableHost:
    def __init__(self, functions: dict):
        """functions: {name: azure.functions Function} from ONE app.get_functions() call."""
        self.functions = functions
        self.instances = {}
        self.entities = {}  # scheduler id "@name@key" -> (exists, state_text)
        self.work = queue.Queue()
        self.paused = threading.Event()
        self.lock = threading.RLock()
        self.log = []  # (kind, detail) for assertions
        self.clock = T0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.port = self._server.server_address[1]
        self.rpc_base_url = f"http://127.0.0.1:{self.port}/durabletask/"
        self._threads = [
            threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True),
            threading.Thread(target=self._dispatch_loop, daemon=True),
        ]

    # -- lifecycle
    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()
        self.work.put(None)

    def client_json(self) -> str:
        return client_binding_json(self.rpc_base_url)

    def tick(self) -> datetime:
        self.clock += timedelta(seconds=1)
        return self.clock

    # -- handles (the app's own SDK handles)
    def _handle(self, name):
        return self.functions[name].get_user_function()

    # -- dispatcher
    def _dispatch_loop(self):
        while True:
            item = self.work.get()
            if item is None:
                return
            while self.paused.is_set():
                threading.Event().wait(0.01)
            try:
                kind, arg = item
                if kind == "start":
                    self._run_orchestration(arg)
                elif kind == "signal":
                    self._run_entity_batch(*arg)
            except Exception as e:  # surface in test logs
                self.log.append(("dispatch-error", repr(e)))

    def _replay(self, inst: Instance) -> dict:
        ctx = func.OrchestrationContext(orchestration_context_json(inst.id, inst.history, inst.input_text))
        try:
            return json.loads(self._handle(inst.name)(ctx))
        except Exception as e:
            # The SDK raises "<msg>\n\n$OutOfProcData$:<state json>" on orchestrator failure.
            return {
                "isDone": False,
                "error": str(e).split("\n\n$OutOfProcData$")[0],
                "failed": True,
                "actions": [],
            }

    def _run_orchestration(self, inst: Instance):
        inst.status = "Running"
        t = self.tick()
        inst.history = [
            history_event(ORCHESTRATOR_STARTED, t),
            history_event(
                EXECUTION_STARTED,
                t,
                Name=inst.name,
                Version="",
                Input=json.dumps(inst.input_text),
                OrchestrationInstance={"InstanceId": inst.id, "ExecutionId": uuid.uuid4().hex},
            ),
        ]
        while True:
            state = self._replay(inst)
            self.log.append(("orchestrator-output", state))
            if state.get("failed"):
                inst.status, inst.output = "Failed", state["error"]
                return
            if state.get("customStatus") is not None:
                inst.custom_status = state["customStatus"]
            if state["isDone"]:
                inst.status, inst.output = "Completed", state.get("output")
                inst.updated = datetime.now(UTC)
                return
            # schemaVersion >= 1: one flat list in actions[0]; V1: one list per action
            flat = [a for group in state["actions"] for a in group]
            new_actions = flat[inst.actions_done :]
            inst.actions_done = len(flat)
            for h in inst.history:
                h["IsPlayed"] = True
            t = self.tick()
            responses = []
            for seq, action in enumerate(new_actions, start=len(flat) - len(new_actions)):
                if action["actionType"] not in (CALL_ENTITY, SIGNAL_ENTITY):
                    raise NotImplementedError(action)
                req_id = str(uuid.uuid4())
                is_signal = action["actionType"] == SIGNAL_ENTITY
                request = {
                    "op": action["operation"],
                    "signal": is_signal,
                    "input": json.dumps(action["input"]),
                    "id": req_id,
                    "parent": inst.id,
                }
                inst.history.append(
                    history_event(
                        EVENT_SENT,
                        t,
                        event_id=seq,
                        InstanceId=action["instanceId"],
                        Name="op",
                        Input=json.dumps(request),
                    )
                )
                _, name, key = action["instanceId"].split("@", 2)
                result = self._run_entity_batch(
                    name, key, [batch_op(action["operation"], action["input"], is_signal)]
                )[0]
                if not is_signal:
                    resp = {"result": result["result"]}
                    if result["isError"]:
                        resp["exceptionType"] = "Error"
                    responses.append((req_id, resp))
            inst.history.append(history_event(ORCHESTRATOR_COMPLETED, t))
            t = self.tick()
            inst.history.append(history_event(ORCHESTRATOR_STARTED, t))
            for req_id, resp in responses:
                inst.history.append(history_event(EVENT_RAISED, t, Name=req_id, Input=json.dumps(resp)))
            if not responses:
                return  # nothing to wait for (would hang in real life too)

    def _run_entity_batch(self, name, key, batch):
        sid = f"@{name.lower()}@{key}"
        with self.lock:
            exists, state = self.entities.get(sid, (False, None))
            ctx = func.EntityContext(entity_batch_json(name.lower(), key, exists, state, batch))
            out = json.loads(self._handle(name)(ctx))
            self.log.append(("entity-output", out))
            self.entities[sid] = (out["entityExists"], out["entityState"] if out["entityExists"] else None)
            return out["results"]

    # -- RPC endpoint (subset of HttpApiHandler used by DurableOrchestrationClient)
    def _status_payload(self, inst: Instance) -> dict:
        return {
            "name": inst.name,
            "instanceId": inst.id,
            "runtimeStatus": inst.status,
            "input": inst.input_text,
            "customStatus": inst.custom_status,
            "output": inst.output,
            "createdTime": inst.created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "lastUpdatedTime": inst.updated.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    def _handler_class(host_self):
        host = host_self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code, body=None, headers=None):
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _body(self):
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _route(self):
                u = urlparse(self.path)
                assert u.path.startswith("/durabletask/"), u.path
                parts = [unquote(p) for p in u.path[len("/durabletask/") :].split("/") if p]
                return parts, parse_qs(u.query)

            def do_POST(self):
                parts, q = self._route()
                raw = self._body()
                host.log.append(("rpc", "POST", self.path, raw.decode()))
                if parts[0] == "orchestrators":
                    name = parts[1]
                    iid = parts[2] if len(parts) > 2 else uuid.uuid4().hex
                    # body is JSON; the Python client sends json=<df_dumps text>, i.e. a
                    # JSON *string literal*; the extension JsonConvert-deserializes it.
                    input_text = json.loads(raw) if raw else None
                    with host.lock:
                        existing = host.instances.get(iid)
                        if existing and existing.status in ("Pending", "Running"):
                            return self._send(
                                400,
                                {
                                    "Message": "An error has occurred.",
                                    "ExceptionMessage": f"instance exists ({existing.status})",
                                },
                            )
                        inst = Instance(name, iid, input_text)
                        host.instances[iid] = inst
                    host.work.put(("start", inst))
                    return self._send(202, {"id": iid})
                if parts[0] == "entities":
                    name, key = parts[1], parts[2]
                    op = q.get("op", [""])[0]
                    sdk_text = json.loads(raw) if raw else None
                    host.work.put(("signal", (name, key, [batch_op(op, sdk_text, True)])))
                    return self._send(202)
                return self._send(404)

            def do_GET(self):
                parts, _query = self._route()
                host.log.append(("rpc", "GET", self.path, ""))
                if parts[0] == "instances" and len(parts) == 2:
                    inst = host.instances.get(parts[1])
                    if inst is None:
                        return self._send(404)
                    code = 202 if inst.status in ("Pending", "Running") else 200
                    return self._send(code, host._status_payload(inst))
                if parts[0] == "entities" and len(parts) == 3:
                    exists, state = host.entities.get(f"@{parts[1].lower()}@{parts[2]}", (False, None))
                    if not exists:
                        return self._send(404)
                    return self._send(200, json.loads(state))
                return self._send(404)

        return H
