"""The events service's managers: ``EventsManager`` (threads) and ``AsyncEventsManager`` (asyncio, no thread
held by a listener). Both serve one ``Events`` stream; they differ only in how a listener waits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from grpc_helper.api import events_pb2_grpc
from grpc_helper.api.common_pb2 import ResultCode
from grpc_helper.api.events_pb2 import Event, EventFilter, EventRequest, ListenItem
from grpc_helper.errors import RpcException
from grpc_helper.events.log import Cursor, Events


def _stream_shutdown() -> RpcException:
    return RpcException("the server is shutting down; listen again later to resume", ResultCode.ERROR_STREAM_SHUTDOWN)


class _EventsServicer(events_pb2_grpc.EventsServiceServicer):
    def __init__(self, events: Events) -> None:
        self.events = events
        self.logger = logging.getLogger("grpc_helper.events")
        self._closing = False

    def send(self, request: EventRequest, context: Any = None) -> Event:
        if not self.events.remote_send:
            raise RpcException("this server does not accept events from clients", ResultCode.ERROR_PERMISSION_DENIED)
        return self.events.send(request.name, request.properties)


class EventsManager(_EventsServicer):
    """Serves an ``Events`` stream on ``RpcServer``: each listener holds a server thread while it listens."""

    def __init__(self, events: Events) -> None:
        super().__init__(events)
        self._changed = threading.Condition()
        events.subscribe(self._wake)

    def _wake(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def listen(self, request: EventFilter, context: Any) -> Iterator[ListenItem]:
        cursor = self.events.cursor(request)
        context.add_callback(self._wake)  # a cancelled or timed out listener stops waiting at once
        yield cursor.keepalive()
        sent = time.monotonic()
        while True:
            items = cursor.poll()
            if items:
                yield from items
                sent = time.monotonic()
                continue
            if not self._wait(cursor, context, sent + self.events.keepalive - time.monotonic()):
                yield cursor.keepalive()
                sent = time.monotonic()

    def _wait(self, cursor: Cursor, context: Any, timeout: float) -> bool:
        """Wait for an event (True) or the keepalive time (False); raise/stop on shutdown or a gone caller."""
        with self._changed:
            ready = self._changed.wait_for(lambda: self._closing or not context.is_active() or cursor.pending(), max(timeout, 0))
        if self._closing:
            raise _stream_shutdown()
        if not context.is_active():
            raise RpcException("listener gone", ResultCode.ERROR_CANCELLED)
        return ready

    def begin_shutdown(self) -> None:
        self._closing = True
        self._wake()

    def shutdown(self) -> None:
        self.events.unsubscribe(self._wake)


class AsyncEventsManager(_EventsServicer):
    """Serves an ``Events`` stream on ``AsyncRpcServer``: listeners are coroutines waiting on the event loop."""

    def __init__(self, events: Events) -> None:
        super().__init__(events)
        self._wakes: set[asyncio.Event] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        events.subscribe(self._wake)

    async def load(self) -> None:
        self._loop = asyncio.get_running_loop()

    def _wake(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody is listening any more
            loop.call_soon_threadsafe(self._set_all)

    def _set_all(self) -> None:
        for wake in self._wakes:
            wake.set()

    async def listen(self, request: EventFilter, context: Any) -> AsyncIterator[ListenItem]:
        cursor = self.events.cursor(request)
        wake = asyncio.Event()
        self._wakes.add(wake)
        try:
            yield cursor.keepalive()
            while not self._closing:
                wake.clear()
                items = cursor.poll()
                if items:
                    for item in items:
                        yield item
                    continue
                try:
                    await asyncio.wait_for(wake.wait(), self.events.keepalive)
                except TimeoutError:
                    yield cursor.keepalive()
            raise _stream_shutdown()
        finally:
            self._wakes.discard(wake)

    async def begin_shutdown(self) -> None:
        self._closing = True
        self._set_all()

    async def shutdown(self) -> None:
        self.events.unsubscribe(self._wake)
