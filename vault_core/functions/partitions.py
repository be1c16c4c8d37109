"""Where the Durable runtime runs an append: the orchestration's instance id, chosen to put it on
its stream entity's control-queue partition, by the Azure Storage provider's partition hash."""

from __future__ import annotations

from .entity import ENTITY
from .settings import durable_settings


def instance_id(stream: str, key: str) -> str:
    """The append orchestration's instance id: one per stream and Idempotency-Key, so the same key
    on two streams is two appends. Durable's Azure Storage provider runs an instance on the
    control-queue partition its id hashes to; the id ends in the smallest number that puts it on
    its stream entity's partition, so that both run on the same instance and wake each other at
    once, rather than waiting for another instance's next poll of its queue. At most 184
    characters, none of them / \\ # ? or a leading @ (stream names are lowercase letters, digits
    and hyphens; keys letters, digits and ._:-)."""
    partitions = partition_count()
    entity = partition_of(f"@{ENTITY}@{stream}", partitions)
    for salt in range(64 * partitions):  # a match is found within `partitions` tries on average
        candidate = f"{stream}:{key}:{salt}"
        if partition_of(candidate, partitions) == entity:
            return candidate
    return f"{stream}:{key}"  # as good an id, on another partition (about 1 time in 10^28)


def partition_of(instance: str, partitions: int) -> int:
    """Durable's Azure Storage provider: 32-bit FNV-1a over the id's UTF-8 bytes, modulo the
    partition count."""
    value = 2166136261
    for byte in instance.encode():
        value = ((value ^ byte) * 16777619) & 0xFFFFFFFF
    return value % partitions


def partition_count() -> int:
    """host.json's partitionCount (the provider's default, 4, if it sets none)."""
    return int(durable_settings().get("storageProvider", {}).get("partitionCount", 4))
