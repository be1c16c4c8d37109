"""The append orchestration, which calls the stream's entity and retries what may pass with
durable timers, and the hourly purge of finished appends' history."""

from __future__ import annotations

import logging
from collections.abc import Generator
from datetime import UTC, datetime, timedelta
from typing import Any

import azure.durable_functions as df
import azure.functions as func

from .entity import ENTITY, answer_for
from .settings import setting

log = logging.getLogger("vault.functions")


ORCHESTRATOR = "append_batch"


# Seconds between the attempts of an append that met a problem that may pass: about 75 s in all,
# more than the longest blob lease (60 s) another writer may hold.
RETRY_DELAYS = (1, 2, 4, 8, 15, 15, 15, 15)


# An hourly purge covers appends created this long before its cut-off: about an hour's worth,
# with room for runs that failed or did not run.
PURGE_WINDOW = timedelta(hours=3)


FINISHED = (
    df.OrchestrationRuntimeStatus.Completed,
    df.OrchestrationRuntimeStatus.Failed,
    df.OrchestrationRuntimeStatus.Terminated,
)


def append_orchestration(context: df.DurableOrchestrationContext) -> Generator[Any, Any, dict[str, Any]]:
    """Calls the stream's entity, and again after a durable timer while the answer is a problem
    that may pass. Durable replays repeat the calls' results, never the appends."""
    payload = context.get_input(expected_type=dict)
    entity = df.EntityId(ENTITY, payload["stream"])
    for delay in (*RETRY_DELAYS, None):
        try:
            result = yield context.call_entity(entity, "append", payload)
        except Exception as error:  # the runtime failed the whole batch (a function timeout, say)
            result = answer_for(
                RuntimeError(f"the stream's entity failed the operation: {error}"), retry=True
            )
        if not result.get("retry") or delay is None:
            return result
        yield context.create_timer(context.current_utc_datetime + timedelta(seconds=delay))
    raise AssertionError("unreachable: the last delay is None, where the loop returns")


async def purge_history(client: df.DurableOrchestrationClient, timer: func.TimerRequest) -> int:
    """Purges the history of finished appends older than VAULT_PURGE_AFTER_HOURS (orchestrations
    only: running ones, and the entities, which hold no history worth purging, are kept). Each
    hourly run purges those created in the few hours before the cut-off, so that a run deletes
    about an hour's appends, and one that failed is made up by the next; the first run of each
    UTC day sweeps everything older. A purge that times out or fails is logged and left to the
    next run. Once purged, a retried Idempotency-Key is still recognised by the stream itself while
    it is among the stream's last 1,024 batches."""
    hours = float(setting("VAULT_PURGE_AFTER_HOURS") or 24)
    now = datetime.now(UTC)
    until = now - timedelta(hours=hours)
    since = until - PURGE_WINDOW if _ran_today(timer, now) else datetime(2000, 1, 1, tzinfo=UTC)
    try:
        result = await client.purge_instance_history_by(
            created_time_from=since, created_time_to=until, runtime_status=list(FINISHED)
        )
    except Exception as error:  # the SDK's session gives up after 240 s; the runtime may fail it
        log.warning(
            "purging finished appends created %s to %s did not complete (%s: %s); the next run goes on",
            since.isoformat(),
            until.isoformat(),
            type(error).__name__,
            error,
        )
        return 0
    log.info("purged %d finished append orchestrations", result.instances_deleted)
    return result.instances_deleted


def _ran_today(timer: func.TimerRequest, now: datetime) -> bool:
    """Whether the timer last ran on the same UTC day (the runtime says when, in the schedule
    status of its monitor); not on the first run, or when it does not say."""
    last = (getattr(timer, "schedule_status", None) or {}).get("Last")
    try:
        when = datetime.fromisoformat(last) if isinstance(last, str) else None
    except ValueError:
        when = None
    if when is None:
        return False
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    return when.astimezone(UTC).date() == now.date()
