"""The asyncio twin of the sample service, and adapters driving the aio stack from synchronous test bodies.

``AsyncSampleManager`` behaves like ``SampleManager`` and keeps its state (events, ``info_in_load``) in one, so
a test written for the sync stack drives both. ``LoopThread`` runs an event loop in a thread owned by a
fixture; ``SyncAioServer``/``SyncAioClient`` expose ``AsyncRpcServer``/``AsyncRpcClient`` with the sync API.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
import sample_pb2  # type: ignore[import-not-found]
import sample_pb2_grpc  # type: ignore[import-not-found]
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sample_service import SampleManager

import grpc_helper
from grpc_helper import AsyncRpcClient, AsyncRpcManager, AsyncRpcServer
from grpc_helper.api.info_pb2 import InfoFilter

T = TypeVar("T")


class AsyncSampleManager(sample_pb2_grpc.SampleServiceServicer, AsyncRpcManager):
    """``SampleManager`` in ``async def``: every call shape, errors and delays on demand."""

    def __init__(self, state: SampleManager | None = None) -> None:
        super().__init__()
        #: The sync manager holding the flags and events the tests look at.
        self.state = state or SampleManager()

    async def load(self) -> None:
        if self.state.fail_load:
            raise RuntimeError("sample load failure")
        if not self.state.probe_load:
            self.state.loaded.set()
            return
        self.state.info_in_load = await self.client.info.get(InfoFilter(names=["sample"]))
        async with grpc.aio.insecure_channel(self.client.target) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            self.state.health_in_load = (await check(health_pb2.HealthCheckRequest(service=""), timeout=5)).status
        self.state.loaded.set()

    async def shutdown(self) -> None:
        self.state.stopped.set()

    async def _check(self, request: Any) -> None:
        SampleManager.fail_if_asked(request)
        if request.delay:
            self.state.entered.set()
            await self.state.release.wait_async(request.delay)

    async def echo(self, request: Any) -> Any:
        await self._check(request)
        if request.text == "whoami":
            return sample_pb2.Reply(text=repr(grpc_helper.current_identity()))
        return sample_pb2.Reply(text=request.text)

    async def count(self, request: Any, context: Any) -> AsyncIterator[Any]:
        for i in range(request.count):
            if i == 1:
                await self._check(request)
            yield sample_pb2.Reply(text=request.text, index=i)

    async def concat(self, requests: AsyncIterator[Any], context: Any) -> Any:
        texts = []
        async for r in requests:
            await self._check(r)
            texts.append(r.text)
        return sample_pb2.Reply(text="".join(texts), index=len(texts))

    async def mirror(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        i = 0
        async for r in requests:
            await self._check(r)
            yield sample_pb2.Reply(text=r.text[::-1], index=i)
            i += 1


class LoopThread:
    """An event loop running in its own thread; ``close()`` cancels what is left, stops and joins it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="aio-stack-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run ``coro`` on the loop and wait for its result (bounded)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def finish() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.loop.shutdown_asyncgens()

        self.run(finish(), 30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)
        self.loop.close()


async def _next(stream: AsyncIterator[T]) -> tuple[bool, T | None]:
    try:
        return True, await anext(stream)
    except StopAsyncIteration:
        return False, None


class _SyncMethod:
    def __init__(self, runner: LoopThread, method: Any) -> None:
        self._runner = runner
        self._method = method

    def __call__(self, request: Any, timeout: float | None = None, metadata: Any = ()) -> Any:
        async def call() -> Any:
            return self._method(request, timeout=timeout, metadata=metadata)

        result = self._runner.run(call())  # made on the loop: a server stream, or a coroutine to run there
        if hasattr(result, "__anext__"):  # a server stream
            return self._iterate(result)
        return self._runner.run(result)

    def _iterate(self, stream: Any) -> Iterator[Any]:
        try:
            while True:
                more, item = self._runner.run(_next(stream))
                if not more:
                    return
                yield item
        finally:
            self._runner.run(stream.aclose())


class SyncAioClient:
    """An ``AsyncRpcClient`` with ``RpcClient``'s synchronous API, its calls run on a ``LoopThread``."""

    def __init__(self, runner: LoopThread, client: AsyncRpcClient) -> None:
        self.aio = client
        self._runner = runner
        for attr in client._stub_specs:
            service = getattr(client, attr)
            methods = {n: _SyncMethod(runner, m) for n, m in vars(service).items() if not n.startswith("_")}
            setattr(self, attr, type(service)(attr, methods))

    def close(self) -> None:
        self._runner.run(self.aio.close())


class SyncAioServer:
    """An ``AsyncRpcServer`` running on a ``LoopThread``, with ``RpcServer``'s synchronous API."""

    def __init__(self, runner: LoopThread, server: AsyncRpcServer, manager: SampleManager) -> None:
        self.aio = server
        self.manager = manager
        self._runner = runner
        runner.run(server.start())
        self.auto_client = SyncAioClient(runner, server.auto_client)

    @property
    def port(self) -> int:
        return self.aio.port

    @property
    def descriptors(self) -> list[Any]:
        return self.aio.descriptors

    def dump(self) -> Path:
        return self.aio.dump()

    def shutdown(self, grace: float | None = None) -> None:
        self._runner.run(self.aio.shutdown(grace))

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self._runner.run(self.aio.wait_for_termination(timeout))
