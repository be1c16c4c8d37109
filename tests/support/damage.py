"""A stream's log reached behind the vault's back, as a failing disk or a stray writer would: its
page blob on Azure, one byte of it flipped, or its end cut off, on either store."""

from __future__ import annotations

import os

import vault_core
from vault_core.stores.local import LocalStore


def log_blob(store: vault_core.Store, stream: str):
    """The page blob that holds `stream`'s log, on a blob store."""
    return store.backend._home(stream).get_blob_client(f"{stream}/log")  # its own container


def flip_byte(store: vault_core.Store, stream: str, at: int) -> None:
    """Damage the byte at `at` of the log (a file offset: `fmt.data_at(position)` for a position)."""
    if isinstance(store.backend, LocalStore):
        with open(store.backend.root / stream / "log", "r+b") as f:
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


def cut_log(store: vault_core.Store, stream: str, length: int) -> None:
    """Cut the log short to its first `length` bytes, as a lost file tail or a shrunk blob would
    (on a blob store, a whole number of 512-byte pages)."""
    if isinstance(store.backend, LocalStore):
        os.truncate(store.backend.root / stream / "log", length)
        return
    if length % 512:
        raise ValueError(f"a page blob holds whole 512-byte pages, not {length} bytes")
    log_blob(store, stream).resize_blob(length)
