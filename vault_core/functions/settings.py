"""The Function App's settings, and what one worker process keeps for its life: the stores it
writes to, its writers, its thread pools.

Settings (app settings, or local.settings.json when run with Core Tools):
    VAULT_STORE               where streams live: a connection string, an account URL (Entra ID
                              via DefaultAzureCredential) or, for development, a directory;
                              default: the AzureWebJobsStorage connection string
    VAULT_CONTAINER           the streams' blob container (default "vault")
    VAULT_STAGING_CONTAINER   where large batches wait for their entity (default "vault-staging")
    VAULT_WAIT_SECONDS        how long a POST waits for its commit before answering 202 (30)
    VAULT_LEASE_SECONDS       the writers' blob lease (15-60, default 60)
    VAULT_PURGE_AFTER_HOURS   finished appends' orchestration history is purged after (24)
    VAULT_READ_URL_SECONDS    how long the read URLs of GET /api/streams/{stream} last (3600,
                              at most 7 days)
    VAULT_SEGMENT_BYTES       a stream rolls into a new segment when its newest holds this much
                              (default 1 TiB; 4096 to 4 TiB)

The Durable extension's own settings are host.json's durableTask section, which the app reads
itself (durable_settings).
"""

from __future__ import annotations

import functools
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..service import Writers, segment_bytes_setting
from ..store import Store, open_store

# The app's root, beside vault_core/: the folder that is deployed and that the host runs the app
# from (on Azure, with Core Tools and in the host stand-in alike).
HOST_JSON = Path(__file__).resolve().parents[2] / "host.json"


def setting(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name) or default


def _open(container: str) -> Store:
    """The storage the app writes to, in one of its containers."""
    target = setting("VAULT_STORE") or setting("AzureWebJobsStorage")
    if not target:
        raise RuntimeError("set VAULT_STORE (or AzureWebJobsStorage) to where streams live")
    return open_store(target, container=container)


@functools.cache
def store() -> Store:
    return _open(setting("VAULT_CONTAINER") or "vault")


@functools.cache
def staging() -> Store:
    """Where staged batches go: a container of their own beside the streams."""
    return _open(setting("VAULT_STAGING_CONTAINER") or "vault-staging")


@functools.cache
def owners() -> Writers:
    """This worker process's writers, one per stream whose entity ran here, each opened with
    takeover: the runtime runs an entity only where it owns it now."""
    return Writers(
        store(),
        lease_seconds=int(setting("VAULT_LEASE_SECONDS") or 60),
        takeover=True,
        segment_bytes=segment_bytes_setting(setting("VAULT_SEGMENT_BYTES")),
    )


@functools.cache
def entity_pool() -> ThreadPoolExecutor:
    """The entity's batches: as many threads as the runtime runs work items at once on an
    instance."""
    threads = int(durable_settings().get("maxConcurrentOrchestratorFunctions", 10 * (os.cpu_count() or 1)))
    return ThreadPoolExecutor(threads, thread_name_prefix="vault-entity")


@functools.cache
def staging_pool() -> ThreadPoolExecutor:
    """Reads and deletes of staged batches, in parallel."""
    return ThreadPoolExecutor(8, thread_name_prefix="vault-staging")


@functools.cache
def durable_settings() -> dict[str, Any]:
    """host.json's durableTask section (empty where there is no host.json: the defaults apply).

    The app reads the host's file itself: the host hands a worker none of its settings, and what
    the app derives from them (an append's instance id, partitions.py) must come out the same in
    every process that computes it, the app's workers and the tests that look an append up by its
    id, without one telling the others. A copy of vault_core installed elsewhere finds no
    host.json and takes the defaults; a partition count unlike the host's would cost appends
    latency (an orchestration on another instance's partition), never their answer."""
    try:
        config = json.loads(HOST_JSON.read_text())
    except (OSError, ValueError):
        return {}
    return config.get("extensions", {}).get("durableTask", {})
