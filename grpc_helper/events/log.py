"""``Events``: a server's numbered event stream, kept in a bounded window so listeners can resume.

Written once for both stacks: the sync and asyncio managers only differ in how a listener waits.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping

import grpc

from grpc_helper.api.common_pb2 import ResultCode
from grpc_helper.api.events_pb2 import ERROR_EVENTS_LOST, Event, EventFilter, Keepalive, ListenItem
from grpc_helper.errors import RpcException

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
MAX_PROPERTIES = 64
MAX_KEY = 128
MAX_VALUE = 4096
MAX_FILTER_NAMES = 64


def _check_name(name: str, what: str) -> None:
    if not NAME_RE.match(name):
        raise RpcException(f"invalid {what} {name[:64]!r}: expected 1 to 128 of A-Z a-z 0-9 _ . -", ResultCode.ERROR_PARAM_INVALID)


def lost(message: str) -> RpcException:
    """The error of a listener whose resume point is gone (OUT_OF_RANGE, ``EventsResultCode.ERROR_EVENTS_LOST``)."""
    return RpcException(message, ERROR_EVENTS_LOST, status=grpc.StatusCode.OUT_OF_RANGE)


def matcher(names: Iterable[str]) -> Callable[[str], bool]:
    """A test on event names: exact names, or prefixes written ``"prefix*"``; no name: every event."""
    names = list(names)
    if len(names) > MAX_FILTER_NAMES:
        raise RpcException(f"too many names in the filter: {len(names)} (at most {MAX_FILTER_NAMES})", ResultCode.ERROR_PARAM_INVALID)
    exact: set[str] = set()
    prefixes: list[str] = []
    for name in names:
        if name.endswith("*"):
            if name[:-1]:
                _check_name(name[:-1], "event name prefix")
            prefixes.append(name[:-1])
        else:
            _check_name(name, "event name")
            exact.add(name)
    if not names:
        return lambda _name: True
    return lambda name: name in exact or any(name.startswith(p) for p in prefixes)


class Events:
    """The event stream of a server: ``send()`` numbers each event (1, 2, 3...) and keeps the last ``window``
    ones, so a listener that lost its connection resumes from the last sequence it saw.

    A server hosts its own ``Events`` (see ``BuiltinServices``); give the same object to the managers that
    publish::

        events = Events()
        server = RpcServer(0, [my_descriptor(MyManager(events))], services=BuiltinServices(events=events))
        events.send("job-done", {"id": "42"})      # from any thread

    :param window: how many events are retained for resuming listeners.
    :param keepalive: seconds of silence after which a listen stream gets a keepalive.
    :param remote_send: whether administrators may send events through the service (else only managers).
    """

    def __init__(self, window: int = 10_000, keepalive: float = 10.0, *, remote_send: bool = False) -> None:
        if window < 1:
            raise ValueError(f"events window must be at least 1, not {window}")
        if not keepalive > 0:
            raise ValueError(f"events keepalive must be positive, not {keepalive}")
        self.window = window
        self.keepalive = keepalive
        self.remote_send = remote_send
        #: Identifies this stream: sequence numbers restart with each ``Events`` (each server start).
        self.stream = secrets.token_hex(8)
        self._retained: deque[Event] = deque(maxlen=window)
        self._last = 0
        self._lock = threading.Lock()
        self._wakers: set[Callable[[], None]] = set()

    @property
    def last(self) -> int:
        """Sequence number of the last event sent (0: none yet)."""
        return self._last

    def send(self, name: str, properties: Mapping[str, str] | None = None) -> Event:
        """Publish an event; returns it with its sequence number. Thread-safe.

        Raises ``RpcException(ERROR_PARAM_INVALID)`` for a bad name (1 to 128 of ``A-Za-z0-9_.-``) or too many
        or too large properties (64 at most, keys up to 128 characters, values up to 4096)."""
        _check_name(name, "event name")
        props = dict(properties or {})
        if len(props) > MAX_PROPERTIES:
            raise RpcException(
                f"event {name}: too many properties ({len(props)}, at most {MAX_PROPERTIES})", ResultCode.ERROR_PARAM_INVALID
            )
        for key, value in props.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise RpcException(f"event {name}: property keys and values must be strings", ResultCode.ERROR_PARAM_INVALID)
            if not key or len(key) > MAX_KEY or len(value) > MAX_VALUE:
                raise RpcException(
                    f"event {name}: property {key[:64]!r} too large or empty (key 1..{MAX_KEY}, value up to {MAX_VALUE} characters)",
                    ResultCode.ERROR_PARAM_INVALID,
                )
        with self._lock:
            self._last += 1
            event = Event(sequence=self._last, name=name, properties=props, time=time.time(), stream=self.stream)
            self._retained.append(event)
            wakers = list(self._wakers)
        for wake in wakers:
            wake()
        return event

    def subscribe(self, wake: Callable[[], None]) -> None:
        """Have ``wake()`` called after each ``send()`` (from the sending thread; it must not block)."""
        with self._lock:
            self._wakers.add(wake)

    def unsubscribe(self, wake: Callable[[], None]) -> None:
        with self._lock:
            self._wakers.discard(wake)

    def cursor(self, request: EventFilter) -> Cursor:
        """Where a ``listen(request)`` starts: validates the filter and the resume point."""
        match = matcher(request.names)
        if not request.stream:
            return Cursor(self, match, self._last)
        if request.stream != self.stream:
            raise lost(f"events of stream {request.stream[:32]} are gone (the server restarted; now {self.stream})")
        if request.after > self._last:
            raise RpcException(f"resume point {request.after} is after the last event ({self._last})", ResultCode.ERROR_PARAM_INVALID)
        cursor = Cursor(self, match, request.after)
        cursor.check()
        return cursor

    def after(self, sequence: int) -> tuple[list[Event], int]:
        """Retained events after ``sequence`` and the last sequence; raises the lost error if some are gone."""
        with self._lock:
            last = self._last
            if sequence >= last:
                return [], last
            oldest = self._retained[0].sequence
            if sequence + 1 < oldest:
                raise lost(
                    f"events {sequence + 1} to {oldest - 1} are no longer retained (window: {self.window} events); "
                    "listen again without a resume point"
                )
            start = sequence + 1 - oldest
            return [self._retained[i] for i in range(start, len(self._retained))], last


class Cursor:
    """One listener's position in an ``Events`` stream and its filter: what to send next."""

    def __init__(self, events: Events, match: Callable[[str], bool], position: int) -> None:
        self.events = events
        self.match = match
        #: Every matching event up to this sequence has been handed out.
        self.position = position

    def check(self) -> None:
        self.events.after(self.position)

    def pending(self) -> bool:
        return self.events.last > self.position

    def poll(self) -> list[ListenItem]:
        """The matching events sent since the last poll (advances the position past the others too)."""
        events, self.position = self.events.after(self.position)
        return [ListenItem(event=e) for e in events if self.match(e.name)]

    def keepalive(self) -> ListenItem:
        return ListenItem(keepalive=Keepalive(stream=self.events.stream, sequence=self.position))
