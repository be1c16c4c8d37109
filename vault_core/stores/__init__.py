"""The backends: where streams' bytes live. `open_backend` picks one from what it is given, and
`source_from_url` opens the log behind one of a backend's read URLs."""

from __future__ import annotations

import os
import re
from typing import Any

from .base import Backend, LogSource, LogWriter, StreamLog

__all__ = ["Backend", "LogSource", "LogWriter", "StreamLog", "open_backend", "source_from_url"]

DEFAULT_CONTAINER = "vault"
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_CONNECTION_KEYS = ("usedevelopmentstorage=", "accountname=", "blobendpoint=", "sharedaccesssignature=")


def open_backend(
    target: str | os.PathLike[str], *, credential: Any = None, container: str = DEFAULT_CONTAINER
) -> Backend:
    """The backend that `target` names, as `vault_core.open_store` describes (which wraps it)."""
    if isinstance(target, str):
        lowered = target.strip().lower()
        if lowered.startswith("memory:"):
            from .memory import memory_store

            return memory_store(target.strip())
        if lowered.startswith(("https://", "http://")):
            from .blob import BlobStore

            return BlobStore.from_url(target, credential=credential, container=container)
        if any(key in lowered for key in _CONNECTION_KEYS):
            from .blob import BlobStore

            return BlobStore.from_connection_string(target, container=container)
        if not target:
            raise ValueError("store target is empty: give a directory, a connection string or a URL")
        scheme = _SCHEME.match(target.strip())
        if scheme and len(scheme[1]) > 1:  # (a one-letter "scheme" is a Windows drive: C:\\data)
            raise ValueError(
                f"store target {target.split('?', 1)[0][:80]!r} looks like a URL, but {scheme[1]}: is not a "
                "kind of store: give a directory (./data), an Azure Storage connection string "
                "(UseDevelopmentStorage=true for Azurite), an account URL (https://ACCOUNT.blob.core."
                "windows.net) or memory: (in this process); a directory whose name has a colon is "
                "written ./NAME"
            )
    elif not isinstance(target, os.PathLike):
        raise TypeError(f"store target must be a path or a string, got {type(target).__name__}")
    from .local import LocalStore

    return LocalStore(target)


def source_from_url(url: str, *, credential: Any = None) -> tuple[str, StreamLog]:
    """The stream name and log behind a read URL from a backend's `read_url` (a SAS or file://
    URL; a plain blob URL with an Azure `credential`; memory: in this process)."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "file":
        from .local import source_from_url as local_source_from_url

        return local_source_from_url(url)
    if scheme == "memory":
        from .memory import source_from_url as memory_source_from_url

        return memory_source_from_url(url)
    if scheme in ("https", "http"):
        from .blob import source_from_url as blob_source_from_url

        return blob_source_from_url(url, credential=credential)
    raise ValueError(f"unsupported read URL {url!r}: expected file://, https://, http:// or memory:")
