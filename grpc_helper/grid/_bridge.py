"""Hosting the grid's asyncio servicers in a thread-based ``RpcServer`` too.

The grid's home is ``AsyncRpcServer``, where a waiting worker or client costs no thread. A sync server (one
that also hosts thread-based services) gets thin wrappers instead: the grid's coroutines run on an event loop
of their own thread, each call's thread waits for them (a stream holds its server thread, as any stream does
on a sync server). The caller's identity travels with each step (``run_coroutine_threadsafe`` copies the
calling thread's context).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc

_END = object()


def in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class LoopThread:
    """An event loop running in a daemon thread of its own."""

    def __init__(self, name: str = "grid-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, awaitable: Awaitable[Any], timeout: float | None = None) -> Any:
        return self.submit(awaitable).result(timeout)

    def submit(self, awaitable: Awaitable[Any]) -> concurrent.futures.Future[Any]:
        async def call() -> Any:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(call(), self.loop)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)


class _Requests:
    """A sync request iterator as an async one (a thread reads it)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, requests: Iterator[Any]) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        threading.Thread(target=self._pump, args=(requests,), name="grid-bridge-requests", daemon=True).start()

    def _pump(self, requests: Iterator[Any]) -> None:
        try:
            for item in requests:
                self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except Exception:
            pass
        finally:
            if not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._queue.put_nowait, _END)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        item = await self._queue.get()
        if item is _END:
            raise StopAsyncIteration
        return item


def _iterate(bridge: LoopThread, stream: AsyncIterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
    pending: list[concurrent.futures.Future[Any]] = []

    def cancel() -> None:  # the client left: cancel the waiting step
        for step in pending:
            step.cancel()

    context.add_callback(cancel)
    try:
        while context.is_active():
            step = bridge.submit(anext(stream))
            pending[:] = [step]
            try:
                item = step.result()
            except (StopAsyncIteration, concurrent.futures.CancelledError):
                return
            yield item
    finally:
        bridge.submit(stream.aclose())  # type: ignore[attr-defined]


def sync_method(bridge: Callable[[], LoopThread], method: Callable[..., Any], shape: str) -> Callable[..., Any]:
    """A sync servicer method running ``method`` (async) on the bridge's loop; shape: unary, stream or bidi."""
    if shape == "unary":

        def unary(request: Any, context: grpc.ServicerContext) -> Any:
            return bridge().run(method(request, context))

        return unary
    if shape == "stream":

        def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            return _iterate(bridge(), method(request, context), context)

        return stream

    def bidi(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        loop_thread = bridge()
        return _iterate(loop_thread, method(_Requests(loop_thread.loop, requests), context), context)

    return bidi
