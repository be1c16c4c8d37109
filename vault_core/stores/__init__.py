"""Where streams live: `open_store` picks the backend from what it is given."""

from __future__ import annotations

import os
import re
from typing import Any

from .base import LogSource, LogWriter, Store

__all__ = ["LogSource", "LogWriter", "Store", "open_source", "open_store"]

DEFAULT_CONTAINER = "vault"
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_CONNECTION_KEYS = ("usedevelopmentstorage=", "accountname=", "blobendpoint=", "sharedaccesssignature=")


def open_store(
    target: str | os.PathLike[str], *, credential: Any = None, container: str = DEFAULT_CONTAINER
) -> Store:
    """A local directory path -> the embedded store; an Azure Storage connection string
    ("UseDevelopmentStorage=true" for the emulator) or an account URL ("https://<account>.blob.
    core.windows.net[/<container>]", with `credential`, by default DefaultAzureCredential) ->
    page blobs in `container`."""
    if isinstance(target, str):
        lowered = target.strip().lower()
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
                "(UseDevelopmentStorage=true for Azurite), or an account URL (https://ACCOUNT.blob.core."
                "windows.net); a directory whose name has a colon is written ./NAME"
            )
    elif not isinstance(target, os.PathLike):
        raise TypeError(f"store target must be a path or a string, got {type(target).__name__}")
    from .local import LocalStore

    return LocalStore(target)


def open_source(read_url: str, *, credential: Any = None) -> tuple[str, LogSource]:
    """The stream name and log behind a read URL from `Store.read_url`."""
    if not isinstance(read_url, str):
        raise TypeError(f"read URL must be a string, got {type(read_url).__name__}")
    scheme = read_url.split(":", 1)[0].lower()
    if scheme == "file":
        from .local import source_from_url

        return source_from_url(read_url)
    if scheme in ("https", "http"):
        from .blob import source_from_url as blob_source_from_url

        return blob_source_from_url(read_url, credential=credential)
    raise ValueError(f"unsupported read URL {read_url!r}: expected file://, https:// or http://")
