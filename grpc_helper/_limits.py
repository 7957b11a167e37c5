"""Per-identity quotas: concurrent calls, concurrent streams, and a send timeout for readers that stop reading.

The server counts, for each caller (its certificate name, or its peer host when it has none), the calls and
the streams it has in flight, and refuses one more past the limit with RESOURCE_EXHAUSTED. A stream whose
reader stopped reading (a reply waits longer than ``send_timeout`` to be sent) is cut.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from grpc_helper.api.common_pb2 import ResultCode
from grpc_helper.errors import RpcException


@dataclass(frozen=True)
class CallLimits:
    """What one caller may hold at once on a server.

    :param max_calls: calls in flight (streams included).
    :param max_streams: calls with a streamed request or reply in flight.
    :param send_timeout: seconds a streamed reply may wait for the reader before the stream is cut.

    ``RpcServer`` defaults to half its worker threads for calls and a quarter for streams (each sync call
    holds a thread); ``AsyncRpcServer`` to ``CallLimits()``::

        RpcServer(0, [descriptor], limits=CallLimits(max_calls=16, max_streams=4, send_timeout=10))
    """

    max_calls: int = 256
    max_streams: int = 128
    send_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.max_calls < 1 or self.max_streams < 1:
            raise ValueError("max_calls and max_streams must be at least 1")
        if not (math.isfinite(self.send_timeout) and self.send_timeout > 0):
            raise ValueError("send_timeout must be a positive number of seconds")

    @classmethod
    def for_threads(cls, workers: int) -> CallLimits:
        """The sync server's defaults: one caller holds at most half the threads, a quarter in streams."""
        return cls(max_calls=max(1, workers // 2), max_streams=max(1, workers // 4))


class QuotaTable:
    """Calls and streams in flight per caller key; thread-safe, O(1) per call."""

    def __init__(self, limits: CallLimits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._held: dict[str, list[int]] = {}

    def acquire(self, key: str, streaming: bool) -> None:
        """Count one more call for ``key``; raises ``RpcException`` (RESOURCE_EXHAUSTED) past a limit."""
        limits = self.limits
        with self._lock:
            held = self._held.get(key)
            if held is None:
                held = self._held[key] = [0, 0]
            if held[0] >= limits.max_calls:
                raise RpcException(
                    f"too many calls in flight for {key} (limit {limits.max_calls}): retry when some end",
                    ResultCode.ERROR_RESOURCE_EXHAUSTED,
                )
            if streaming and held[1] >= limits.max_streams:
                raise RpcException(
                    f"too many open streams for {key} (limit {limits.max_streams}): close some first",
                    ResultCode.ERROR_RESOURCE_EXHAUSTED,
                )
            held[0] += 1
            if streaming:
                held[1] += 1

    def release(self, key: str, streaming: bool) -> None:
        with self._lock:
            held = self._held[key]
            held[0] -= 1
            if streaming:
                held[1] -= 1
            if held[0] == 0:
                del self._held[key]

    def held(self, key: str) -> tuple[int, int]:
        """``(calls, streams)`` in flight for ``key``."""
        with self._lock:
            calls, streams = self._held.get(key, (0, 0))
            return calls, streams


class SendWatchdog:
    """Cuts streams whose pending reply has waited longer than ``timeout`` to be sent.

    A stream marks each reply with ``sending(token, cancel)`` before handing it to gRPC and ``sent(token)``
    once gRPC asks for the next one; one thread (started on first use, stopped by ``close()``) calls
    ``cancel()`` for replies stuck past the timeout.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._pending: dict[object, tuple[float, Callable[[], None]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sending(self, token: object, cancel: Callable[[], None]) -> None:
        self._pending[token] = (time.monotonic(), cancel)
        if self._thread is None:
            self._start()

    def sent(self, token: object) -> None:
        self._pending.pop(token, None)

    def stalled_error(self) -> RpcException:
        """The error ending a stream the watchdog cut."""
        return RpcException(
            f"stream cut: a reply waited more than {self.timeout:g}s for the reader", ResultCode.ERROR_RESOURCE_EXHAUSTED
        )

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(target=self._run, name="grpc-helper-send-watchdog", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        period = min(1.0, self.timeout / 4)
        while not self._stop.wait(period):
            limit = time.monotonic() - self.timeout
            for token, (since, cancel) in list(self._pending.items()):
                if since < limit and self._pending.pop(token, None) is not None:
                    with contextlib.suppress(Exception):  # a call that ended meanwhile may refuse to be cancelled
                        cancel()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout=5)
