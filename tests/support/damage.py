"""A stream's log reached behind the vault's back, as a failing disk or a stray writer would: its
page blob on Azure, and one byte of it flipped on either store."""

from __future__ import annotations

import vault_core
from vault_core.stores.local import LocalStore


def log_blob(store: vault_core.Store, stream: str):
    """The page blob that holds `stream`'s log, on a blob store."""
    return store._container.get_blob_client(f"{stream}/log")


def flip_byte(store: vault_core.Store, stream: str, at: int) -> None:
    """Damage the byte at `at` of the log (a file offset: `fmt.data_at(position)` for a position)."""
    if isinstance(store, LocalStore):
        with open(store.root / stream / "log", "r+b") as f:
            f.seek(at)
            value = f.read(1)[0]
            f.seek(at)
            f.write(bytes([value ^ 0x20]))
        return
    blob = log_blob(store, stream)
    page = at - at % 512
    data = bytearray(blob.download_blob(offset=page, length=512).readall())
    data[at - page] ^= 0x20
    blob.upload_page(bytes(data), offset=page, length=512)
