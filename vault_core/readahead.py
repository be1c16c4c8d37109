"""Running a generator of lists one list ahead of its caller, in a thread: how a read fetches and
verifies the next chunk of a log while the caller decodes the one before."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Generator
from queue import Empty, Full, Queue
from typing import TypeVar

T = TypeVar("T")


def read_ahead(groups: Generator[list[T], None, None]) -> Generator[list[T], None, None]:
    """Runs `groups` in a thread one group ahead of the caller; errors surface in the caller, and
    a caller that stops early (close(), or dropping the generator) stops the thread."""
    queue: Queue[tuple[list[T] | None, BaseException | None]] = Queue(maxsize=1)
    stop = threading.Event()

    def put(item: tuple[list[T] | None, BaseException | None]) -> None:
        while not stop.is_set():
            try:
                queue.put(item, timeout=0.1)
                return
            except Full:
                continue

    def run() -> None:
        try:
            for group in groups:
                put((group, None))
                if stop.is_set():
                    return
            put((None, None))
        except BaseException as error:  # handed to the caller, who raises it
            put((None, error))
        finally:
            groups.close()

    thread = threading.Thread(target=run, name="vault-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            group, error = queue.get()
            if group is None:
                if error is not None:
                    raise error
                return
            yield group
    finally:
        stop.set()
        with contextlib.suppress(Empty):
            queue.get_nowait()  # unblock a thread waiting to hand over one more group
        thread.join()
