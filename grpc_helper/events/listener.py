"""Client side of the events service: listeners that resume where they stopped after an interruption.

``EventListener`` (on an ``RpcClient``) and ``AsyncEventListener`` (on an ``AsyncRpcClient``) share
``ResumeState``: the resume point, the de-duplication and the decision to resume.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

from grpc_helper.api.common_pb2 import ResultCode
from grpc_helper.api.events_pb2 import Event, EventFilter, ListenItem
from grpc_helper.errors import RpcException

#: Failures after which a listener that was receiving listens again from its resume point (transport errors,
#: server shutdown, a stream cut by the server because its reader was slow).
RESUMABLE = frozenset(
    {
        ResultCode.ERROR_RPC,
        ResultCode.ERROR_STREAM_SHUTDOWN,
        ResultCode.ERROR_DEADLINE,
        ResultCode.ERROR_CANCELLED,
        ResultCode.ERROR_RESOURCE_EXHAUSTED,
    }
)


#: Seconds a resuming listener keeps trying while its stream quota is full, and its back-off bounds.
RESUME_PATIENCE = 30.0
FIRST_BACKOFF = 0.05
MAX_BACKOFF = 1.0


class ResumeState:
    """A listener's filter and resume point (``stream``, ``after``), updated by every item received."""

    def __init__(self, names: Iterable[str] = (), stream: str = "", after: int = 0) -> None:
        self.names = list(names)
        #: The server's event stream this listener follows ("" until the first item).
        self.stream = stream
        #: Every matching event up to this sequence was received.
        self.after = after
        self._patience_end: float | None = None
        self._backoff = FIRST_BACKOFF

    def request(self) -> EventFilter:
        return EventFilter(names=self.names, stream=self.stream, after=self.after)

    def receive(self, item: ListenItem) -> Event | None:
        """The new event ``item`` carries, or None (keepalive, or an event already received)."""
        if item.HasField("keepalive"):
            self.stream = item.keepalive.stream
            self.after = max(self.after, item.keepalive.sequence)
            return None
        event = item.event
        if event.stream == self.stream and event.sequence <= self.after:
            return None
        self.stream, self.after = event.stream, event.sequence
        return event

    def retry_delay(self, error: RpcException, received: bool) -> float | None:
        """Seconds to wait before listening again after ``error``, or None to raise it.

        A stream that broke after it started is resumed at once (the client itself retries a server that is
        unreachable, for its whole retry budget). A resume refused by the caller's stream quota is retried with
        a back-off for ``RESUME_PATIENCE`` seconds: the server may not have released the broken stream yet."""
        if received:
            self._patience_end = None
            self._backoff = FIRST_BACKOFF
            return 0.0 if error.rc in RESUMABLE else None
        if error.rc != ResultCode.ERROR_RESOURCE_EXHAUSTED or not self.stream:
            return None
        now = time.monotonic()
        if self._patience_end is None:
            self._patience_end = now + RESUME_PATIENCE
        if now >= self._patience_end:
            return None
        delay, self._backoff = self._backoff, min(MAX_BACKOFF, self._backoff * 2)
        return min(delay, self._patience_end - now)


class EventListener:
    """Iterate the events of a server, resuming after interruptions, with nothing lost or repeated while the
    resume point stays in the server's retained window (else ``RpcException`` with
    ``EventsResultCode.ERROR_EVENTS_LOST``)::

        listener = EventListener(client, ["config-changed", "job-*"])
        for event in listener:
            print(event.sequence, event.name, dict(event.properties))

    :param client: an ``RpcClient`` with the events service (``server.auto_client``, or stubs from
        ``builtin_stubs()``); its ``timeout`` bounds how long a resume waits for the server.
    :param names: event names, ``"prefix*"`` for prefixes; none: every event.
    :param stream: and ``after``: resume point of an earlier listener (its ``.stream`` and ``.after``), to
        continue after a reconnect; default: events from now on.
    :param service: the client attribute of the events service.

    ``close()`` (from another thread) ends the iteration at the next event or keepalive; breaking out of
    the loop ends it at once.
    """

    def __init__(self, client: Any, names: Iterable[str] = (), *, stream: str = "", after: int = 0, service: str = "events") -> None:
        self._service = getattr(client, service)
        self.state = ResumeState(names, stream, after)
        self._closed = False

    @property
    def stream(self) -> str:
        return self.state.stream

    @property
    def after(self) -> int:
        return self.state.after

    def items(self) -> Iterator[Event | None]:
        """Events as they come, and None for each keepalive (the listener is subscribed once it yields)."""
        while not self._closed:
            received = False
            try:
                for item in self._service.listen(self.state.request()):
                    received = True
                    if self._closed:
                        return
                    yield self.state.receive(item)
                return
            except RpcException as error:
                delay = self.state.retry_delay(error, received)
                if delay is None:
                    raise
                time.sleep(delay)

    def __iter__(self) -> Iterator[Event]:
        for event in self.items():
            if event is not None:
                yield event

    def close(self) -> None:
        self._closed = True


class AsyncEventListener:
    """The asyncio twin of ``EventListener``, on an ``AsyncRpcClient``; cancel the task to stop it::

        async for event in AsyncEventListener(client, ["job-*"]):
            print(event.name)
    """

    def __init__(self, client: Any, names: Iterable[str] = (), *, stream: str = "", after: int = 0, service: str = "events") -> None:
        self._service = getattr(client, service)
        self.state = ResumeState(names, stream, after)

    @property
    def stream(self) -> str:
        return self.state.stream

    @property
    def after(self) -> int:
        return self.state.after

    async def items(self) -> AsyncIterator[Event | None]:
        """Events as they come, and None for each keepalive (the listener is subscribed once it yields)."""
        while True:
            received = False
            try:
                async for item in self._service.listen(self.state.request()):
                    received = True
                    yield self.state.receive(item)
                return
            except RpcException as error:
                delay = self.state.retry_delay(error, received)
                if delay is None:
                    raise
                await asyncio.sleep(delay)

    async def __aiter__(self) -> AsyncIterator[Event]:
        async for event in self.items():
            if event is not None:
                yield event
