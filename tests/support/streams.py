"""What a stream holds, in the shape tests compare it in."""

from __future__ import annotations

import vault_core


def contents(store: vault_core.Store, stream: str) -> list[tuple[str, bytes]]:
    """Every message of `stream`, in order, as (key, value)."""
    return [(m.key, m.value) for m in store.reader(stream).replay()]
