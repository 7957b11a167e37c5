"""``ServerManager``: the server service (remote shutdown), on both stacks."""

from __future__ import annotations

import asyncio
import inspect
import math
import threading
from collections.abc import Callable
from typing import Any

from grpc_helper.api import server_pb2, server_pb2_grpc
from grpc_helper.api.common_pb2 import Empty, ResultCode
from grpc_helper.errors import RpcException

#: Longest accepted shutdown delay, in seconds.
MAX_DELAY = 3600.0


class ServerManager(server_pb2_grpc.ServerServiceServicer):
    """Stops its server on request: the call answers, then ``stop()`` runs ``delay`` seconds later.

    :param stop: stops the server (may return an awaitable on an asyncio server).
    """

    def __init__(self, stop: Callable[[], Any]) -> None:
        self._stop = stop
        self._lock = threading.Lock()
        self._requested = False
        self._timer: threading.Timer | asyncio.TimerHandle | None = None
        self._task: asyncio.Future[Any] | None = None

    def shutdown(  # type: ignore[override]  # also the server's argument-less shutdown() hook
        self, request: server_pb2.ShutdownRequest | None = None, context: Any = None
    ) -> Empty | None:
        """The RPC; also the server's ``shutdown()`` hook (called without a request: nothing to do then)."""
        if request is None:
            return None
        delay = request.delay
        if not (math.isfinite(delay) and 0 <= delay <= MAX_DELAY):
            raise RpcException(f"invalid shutdown delay {delay}: expected 0 to {MAX_DELAY:g} seconds", ResultCode.ERROR_PARAM_INVALID)
        with self._lock:
            if self._requested:
                raise RpcException("a shutdown is already requested", ResultCode.ERROR_STATE_UNEXPECTED)
            self._requested = True
        if hasattr(context, "add_done_callback"):  # grpc.aio: the callback runs on the event loop
            context.add_done_callback(lambda _call: self._later(delay))
        else:
            context.add_callback(lambda: self._in_thread(delay))
        return Empty()

    def _in_thread(self, delay: float) -> None:
        timer = threading.Timer(delay, self._stop)
        timer.name = "server-service-shutdown"
        with self._lock:
            self._timer = timer
        timer.start()

    def _later(self, delay: float) -> None:
        self._timer = asyncio.get_running_loop().call_later(delay, self._fire)

    def _fire(self) -> None:
        result = self._stop()
        if inspect.isawaitable(result):
            self._task = asyncio.ensure_future(result)

    def begin_shutdown(self) -> None:
        """Server hook: a pending delayed shutdown is moot once the server stops anyway."""
        with self._lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
