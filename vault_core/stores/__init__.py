"""Where streams live: `open_store` picks the backend from what it is given."""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .base import LogSource, LogWriter, Store

__all__ = ["LogSource", "LogWriter", "Store", "is_api_url", "open_source", "open_store"]

DEFAULT_CONTAINER = "vault"
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
API_STREAM_PATH = re.compile(r"(?P<base>(?:/[^/]+)*?)/api/streams/(?P<stream>[^/]+)/?")
_CONNECTION_KEYS = ("usedevelopmentstorage=", "accountname=", "blobendpoint=", "sharedaccesssignature=")


def open_store(
    target: str | os.PathLike[str], *, credential: Any = None, container: str = DEFAULT_CONTAINER
) -> Store:
    """A local directory path -> the embedded store; an Azure Storage connection string
    ("UseDevelopmentStorage=true" for the emulator) or an account URL ("https://<account>.blob.
    core.windows.net[/<container>]", with `credential`, by default DefaultAzureCredential) ->
    page blobs in `container`; "memory:" (a new store) or "memory:NAME" (this process's store of
    that name) -> streams in memory."""
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


def open_source(url: str, *, credential: Any = None, key: str | None = None) -> tuple[str, LogSource]:
    """The stream name and log behind a read URL from `Store.read_url` (a SAS or file:// URL; a
    plain blob URL with an Azure `credential`), or behind a stream's API URL (`is_api_url`; `key`:
    the API key), whose read URLs it asks the API for and renews as they expire."""
    if not isinstance(url, str):
        raise TypeError(f"read URL must be a string, got {type(url).__name__}")
    if credential is None and is_api_url(url):
        from .renewing import RenewingSource

        source = RenewingSource(url, key=key)
        return source.stream, source
    if key is not None:
        raise ValueError(
            "key= is the HTTP API's key, for a stream's API URL (http(s)://HOST/api/streams/NAME); "
            "a read URL needs none"
        )
    scheme = url.split(":", 1)[0].lower()
    if scheme == "file":
        from .local import source_from_url

        return source_from_url(url)
    if scheme == "memory":
        from .memory import source_from_url as memory_source_from_url

        return memory_source_from_url(url)
    if scheme in ("https", "http"):
        from .blob import source_from_url as blob_source_from_url

        return blob_source_from_url(url, credential=credential)
    raise ValueError(f"unsupported read URL {url!r}: expected file://, https://, http:// or memory:")


def is_api_url(url: str) -> bool:
    """Whether `url` is a stream's address on the vault's HTTP API, http(s)://HOST[:PORT]/api/
    streams/NAME, rather than a read URL: file://, or a blob URL (a SAS carries sig=)."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or "sig" in parse_qs(parts.query):
        return False
    return API_STREAM_PATH.fullmatch(parts.path) is not None
