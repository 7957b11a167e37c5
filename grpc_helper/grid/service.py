"""``Grid``: the state the three grid services share, on the hosting asyncio server's event loop.

It owns the scheduler, the reaper task (heartbeats, expiry), the worker processes the controller spawned and
the delayed shutdown. Streams wait on ``asyncio.Event``\\ s that the scheduler's wake callbacks set: a waiting
worker or client costs a few objects, not a thread.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from grpc_helper.grid._backend import Backend
from grpc_helper.grid._bridge import LoopThread
from grpc_helper.grid.config import GridLimits
from grpc_helper.grid.scheduler import Scheduler
from grpc_helper.grid.spawner import DEFAULT_HANDLER, WorkerSpawner

_log = logging.getLogger("grpc_helper.grid")


def waker(event: asyncio.Event) -> Callable[[], None]:
    """A callback setting ``event`` from any thread (directly when already on the event loop's thread)."""
    loop = asyncio.get_running_loop()
    loop_thread = threading.get_ident()

    def wake() -> None:
        if threading.get_ident() == loop_thread:
            event.set()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(event.set)

    return wake


class Grid:
    """State shared by the three grid services: the scheduler, spawned workers, reaper, delayed shutdown."""

    def __init__(
        self,
        limits: GridLimits | None = None,
        *,
        backend: Backend | None = None,
        handlers: Mapping[str, str] | None = None,
        default_handler: str = DEFAULT_HANDLER,
        worker_args: Sequence[str] = (),
        on_shutdown: Callable[[], Any] | None = None,
    ) -> None:
        self.scheduler = Scheduler(limits, backend=backend)
        self.backend = self.scheduler.backend
        self.limits = self.scheduler.limits
        self.spawner = WorkerSpawner(
            handlers, default_handler=default_handler, worker_args=worker_args, max_running=self.limits.max_spawned
        )
        self.on_shutdown = on_shutdown
        self._reaper: asyncio.Task[None] | None = None
        self._shutdown_task: asyncio.Task[None] | None = None
        self._closing: asyncio.Future[None] | None = None
        self._closed = threading.Event()
        self._bridge: LoopThread | None = None
        self._bridge_lock = threading.Lock()

    def bridge(self) -> LoopThread:
        """The event loop thread running the grid when a sync ``RpcServer`` hosts it (made on first use)."""
        with self._bridge_lock:
            if self._bridge is None:
                self._bridge = LoopThread()
            return self._bridge

    def stop_bridge(self) -> None:
        with self._bridge_lock:
            bridge, self._bridge = self._bridge, None
        if bridge is not None:
            bridge.stop()

    async def start(self) -> None:
        """Start the reaper on the running loop (idempotent)."""
        if self._reaper is None and not self.scheduler.closed:
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def close(self) -> int:
        """Fail jobs not done (reported to their clients), stop workers (spawned ones included). Idempotent;
        while spawned workers drain, the loop keeps serving their streams."""
        failed = self.scheduler.close()
        if failed:
            _log.info("grid closed: %d job(s) not done were failed", failed)
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._stop_tasks())
        await asyncio.shield(self._closing)
        return failed

    async def _stop_tasks(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
        await asyncio.to_thread(self.spawner.stop_all)
        await asyncio.to_thread(self.backend.close)
        self._closed.set()

    async def durable(self) -> None:
        """Wait until what the scheduler recorded so far is stored by the backend (at once in memory)."""
        await self.backend.committed(self.backend.mark())

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Block (another thread) until the grid is closed."""
        return self._closed.wait(timeout)

    def shutdown_later(self, delay: float) -> None:
        """Close the grid (then call ``on_shutdown``) after ``delay`` seconds, so the caller gets its answer."""
        if self._shutdown_task is None and not self.scheduler.closed:
            self._shutdown_task = asyncio.get_running_loop().create_task(self._shutdown_after(delay))

    async def _shutdown_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        await self.close()
        if self.on_shutdown is not None:
            result = self.on_shutdown()
            if inspect.isawaitable(result):
                await result

    async def _reap(self) -> None:
        period = self.scheduler.reap_period
        while True:
            await asyncio.sleep(period)
            self.scheduler.reap()

    async def grid_status(self) -> dict[str, Any] | None:
        """The whole grid, from a shared backend (every server, every queue); None on a server-local backend."""
        if not self.backend.shared:
            return None
        try:
            return await asyncio.to_thread(self.backend.grid_status)
        except Exception as exc:  # the backend's store is down: the local status still answers
            return {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}

    def status(self) -> dict[str, Any]:
        status = self.scheduler.status()
        status["spawned"] = self.spawner.status()
        status["limits"] = self.limits.as_dict()
        return status
