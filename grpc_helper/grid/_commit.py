"""Group commit: the part of a storing backend that both ``sqlite`` and ``redis`` share.

The scheduler records facts under its lock and never waits: a record only joins a pile. A writer thread waits
``window`` seconds after the first record, takes the whole pile and stores it in one go (one transaction, one
pipeline), then the next pile, so the records of a burst cost one write. ``mark()`` numbers the records made so
far; ``committed(mark)`` (asyncio) and ``flush()`` (threads) wait until they are stored. A pile that fails is
put back (newer records win) and retried with back-off; at close what is pending is stored once more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from abc import abstractmethod
from typing import Generic, TypeVar

from grpc_helper.grid._backend import Backend

_log = logging.getLogger("grpc_helper.grid")

Pile = TypeVar("Pile")


class GroupCommit(Backend, Generic[Pile]):
    """A backend whose records a writer thread stores in piles. Subclasses hold the pile under ``_cond``."""


    def __init__(self, window: float, thread_name: str) -> None:
        self.window = window
        self._cond = threading.Condition(threading.Lock())
        self._seq = 0  # records made
        self._stored = 0  # records stored
        self._waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._closing = False
        self._closed = False
        self.commits = 0
        self.errors = 0
        self._writer = threading.Thread(target=self._write_loop, name=thread_name, daemon=True)

    def _start_writer(self) -> None:
        self._writer.start()

    # ---- what a subclass provides (``_has_pending``, ``_take`` and ``_put_back`` run under ``_cond``) ----

    @abstractmethod
    def _has_pending(self) -> bool: ...

    @abstractmethod
    def _take(self) -> Pile:
        """The pile so far (the subclass starts a new one)."""

    @abstractmethod
    def _put_back(self, pile: Pile) -> None:
        """A pile that failed to store goes back in front of what was recorded since."""

    @abstractmethod
    def _store(self, pile: Pile) -> None:
        """Store one pile (writer thread)."""

    @abstractmethod
    def _where(self) -> str:
        """Where records are stored, for log lines."""

    def _close_storage(self) -> None:
        """Release the storage once the writer has stored the last pile."""

    # ---- recording (under the scheduler's lock: never wait) ----

    def _record(self, count: int) -> None:
        """Call under ``_cond`` after adding ``count`` records to the pile."""
        if count:
            self._seq += count
            self._cond.notify()

    # ---- waiting ----

    def mark(self) -> int:
        return self._seq

    async def committed(self, mark: int) -> None:
        if mark <= self._stored:
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._cond:
            if mark <= self._stored or self._closed:
                return
            self._waiters.append((mark, loop, future))
        await future

    def flush(self, timeout: float | None = None) -> bool:
        with self._cond:
            mark = self._seq
            return self._cond.wait_for(lambda: self._stored >= mark or self._closed, timeout)

    # ---- the writer thread ----

    def _write_loop(self) -> None:
        backoff = 0.05
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._has_pending() or self._closing or self._seq > self._stored)
                if not self._has_pending() and self._closing:
                    return
            if self.window and not self._closing:
                time.sleep(self.window)  # let the burst gather
            with self._cond:
                pile = self._take()
                seq = self._seq
            try:
                self._store(pile)
            except Exception as exc:  # storage down or full: keep the pile, retry; waiters wait (their deadline)
                self.errors += 1
                if self._closing:
                    _log.error("grid state %s: records not stored at close: %s", self._where(), exc)
                    return
                _log.error("grid state %s: cannot store records: %s (retrying)", self._where(), exc)
                with self._cond:
                    self._put_back(pile)
                time.sleep(backoff)
                backoff = min(2.0, backoff * 2)
                continue
            backoff = 0.05
            self.commits += 1
            self._stored_up_to(seq)

    def _stored_up_to(self, seq: int) -> None:
        with self._cond:
            self._stored = seq
            ready = [w for w in self._waiters if w[0] <= seq]
            self._waiters = [w for w in self._waiters if w[0] > seq]
            self._cond.notify_all()
        for _, loop, future in ready:
            with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits any more
                loop.call_soon_threadsafe(_resolve, future)

    # ---- life cycle ----

    def close(self) -> None:
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify_all()
        if self._writer.is_alive():
            self._writer.join()
        with self._cond:
            self._closed = True
            waiters, self._waiters = self._waiters, []
            self._cond.notify_all()
        for _, loop, future in waiters:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, future)
        self._close_storage()

    @property
    def pending(self) -> int:
        return self._seq - self._stored


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
