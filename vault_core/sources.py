"""A stream's log opened from a URL: a read URL, or the stream's address on the vault's HTTP API.

Through the API address it is read for as long as the process runs: the API
(`GET /api/streams/{stream}`) hands out a read URL that expires (an hour, or
VAULT_READ_URL_SECONDS), so `RenewingSource` asks for a fresh one before that and swaps the log
it reads through. Both URLs name the same bytes, so a swap changes nothing a reader sees: no
message is missed or read twice."""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import urllib3

from .client import VaultClient
from .errors import ReadUrlExpired, VaultError
from .format import check_stream_name
from .stores import StreamLog, source_from_url

log = logging.getLogger("vault.read_urls")
RENEW_AT = 0.8  # of a read URL's life: a fresh one is asked for when less than a fifth is left
MIN_RENEWAL_SECONDS = 1.0  # however short the life left looks (clocks differ), not more often
T = TypeVar("T")
API_STREAM_PATH = re.compile(r"(?P<base>(?:/[^/]+)*?)/api/streams/(?P<stream>[^/]+)/?")


def open_source(url: str, *, credential: Any = None, key: str | None = None) -> tuple[str, StreamLog]:
    """The stream name and log behind a read URL from `Store.read_url` (a SAS or file:// URL; a
    plain blob URL with an Azure `credential`), or behind a stream's API URL (`is_api_url`; `key`:
    the API key), whose read URLs it asks the API for and renews as they expire."""
    if not isinstance(url, str):
        raise TypeError(f"read URL must be a string, got {type(url).__name__}")
    if credential is None and is_api_url(url):
        source = RenewingSource(url, key=key)
        return source.stream, source
    if key is not None:
        raise ValueError(
            "key= is the HTTP API's key, for a stream's API URL (http(s)://HOST/api/streams/NAME); "
            "a read URL needs none"
        )
    return source_from_url(url, credential=credential)


def is_api_url(url: str) -> bool:
    """Whether `url` is a stream's address on the vault's HTTP API, http(s)://HOST[:PORT]/api/
    streams/NAME, rather than a read URL: file://, or a blob URL (a SAS carries sig=)."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or "sig" in parse_qs(parts.query):
        return False
    return API_STREAM_PATH.fullmatch(parts.path) is not None


@dataclass
class _Grant:
    """One read URL's log, and who reads through it now: a log swapped out is closed once its
    last read in flight ends."""

    source: StreamLog
    renew_at: float  # time.monotonic() from which a fresh URL is asked for
    expires_at: float  # time.monotonic() at which this one expires (inf: never)
    readers: int = 0
    retired: bool = False


class RenewingSource:
    """A `StreamLog` through a stream's API URL, http(s)://HOST[:PORT]/api/streams/NAME (`key`:
    the API key, sent as x-functions-key; a `?code=` in the URL serves too). Opening it asks the
    API for the stream's read URL (client.NotFound for a stream the API does not know,
    client.Unauthorized for a missing or wrong key). Before each read it renews that URL once
    less than a fifth of its life (its SAS `se=`) is left; a read storage refuses (ReadUrlExpired:
    clocks that differ, a URL revoked) gets a fresh URL and is tried once more."""

    def __init__(self, api_url: str, *, key: str | None = None) -> None:
        parts = urlsplit(api_url)
        match = API_STREAM_PATH.fullmatch(parts.path)
        if parts.scheme.lower() not in ("http", "https") or not parts.netloc or match is None:
            raise ValueError(
                f"{api_url.split('?', 1)[0]!r} is not a stream's API URL: expected "
                "http(s)://HOST[:PORT]/api/streams/NAME"
            )
        self.stream = check_stream_name(unquote(match["stream"]))
        code = parse_qs(parts.query).get("code")
        self._where = f"{parts.scheme}://{parts.netloc}{match['base']}/api/streams/{self.stream}"
        self._client = VaultClient(
            f"{parts.scheme}://{parts.netloc}{match['base']}", key=key or (code[0] if code else None)
        )
        self._lock = threading.Lock()
        self._closed = False
        try:
            self._grant = self._fetch()
        except BaseException:
            self._client.close()
            raise

    def __repr__(self) -> str:
        return f"RenewingSource({self._where!r})"  # the address only: never the key or a SAS

    def read(self, start: int, length: int) -> bytes:
        return self._through(lambda source: source.read(start, length))

    def size(self) -> int:
        return self._through(lambda source: source.size())

    def first_position(self, *, fresh: bool = True) -> int:
        return self._through(lambda source: source.first_position(fresh=fresh))

    def segment_bases(self) -> list[int]:
        return self._through(lambda source: source.segment_bases())

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._retire(self._grant)
            self._client.close()

    def _through(self, operation: Callable[[StreamLog], T]) -> T:
        grant = self._take()
        try:
            return operation(grant.source)
        except ReadUrlExpired:
            pass  # storage refused the URL in hand before we renewed it: a fresh one, once
        finally:
            self._give_back(grant)
        grant = self._take(refused=grant)
        try:
            return operation(grant.source)
        finally:
            self._give_back(grant)

    def _take(self, *, refused: _Grant | None = None) -> _Grant:
        with self._lock:
            if self._closed:
                raise ValueError(f"the log of stream {self.stream!r} read through {self._where} is closed")
            now = time.monotonic()
            if self._grant is refused:
                self._swap(self._fetch())  # no read can go on without it: its error is the caller's
            elif now >= self._grant.renew_at:
                try:
                    self._swap(self._fetch())
                except (VaultError, ValueError, OSError, urllib3.exceptions.HTTPError) as error:
                    # The URL in hand still has life left: read on with it and ask again later. If
                    # the API stays away, the refusal once it expired is the caller's error.
                    self._grant.renew_at = now + max(MIN_RENEWAL_SECONDS, (self._grant.expires_at - now) / 2)
                    log.warning("could not renew the read URL of %s: %s", self._where, error)
            self._grant.readers += 1
            return self._grant

    def _give_back(self, grant: _Grant) -> None:
        with self._lock:
            grant.readers -= 1
            if grant.retired and not grant.readers:
                grant.source.close()

    def _swap(self, fresh: _Grant) -> None:
        self._retire(self._grant)
        self._grant = fresh

    def _retire(self, grant: _Grant) -> None:
        grant.retired = True
        if not grant.readers:
            grant.source.close()

    def _fetch(self) -> _Grant:
        """A fresh read URL from the API, opened."""
        info = self._client.stream_info(self.stream)
        named, source = source_from_url(info.read_url)
        if named != self.stream:
            source.close()
            raise VaultError(
                f"{self._where} answered with the read URL of stream {named!r}, not of {self.stream!r}"
            )
        expiry = None
        if info.read_url.lower().startswith(("https://", "http://")):
            from .stores.blob import sas_expiry

            expiry = sas_expiry(info.read_url) or info.expires_on  # file:// URLs never expire
        now = time.monotonic()
        if expiry is None:
            return _Grant(source, math.inf, math.inf)
        left = (expiry - datetime.now(UTC)).total_seconds()
        return _Grant(source, now + max(MIN_RENEWAL_SECONDS, RENEW_AT * left), now + left)
