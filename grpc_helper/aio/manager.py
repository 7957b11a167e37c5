"""``AsyncRpcManager``: base class for the objects that implement a service hosted by an ``AsyncRpcServer``."""

from __future__ import annotations

import asyncio

from grpc_helper._manager_base import ManagerBase
from grpc_helper.aio.client import AsyncRpcClient


class AsyncRpcManager(ManagerBase[AsyncRpcClient]):
    """Base class for asyncio service implementations hosted by an ``AsyncRpcServer``.

    Combine it with the generated servicer; methods are ``async def`` (unary responses) or async generators
    (streamed responses), and request streams arrive as async iterators::

        class MyManager(my_pb2_grpc.MyServiceServicer, AsyncRpcManager):
            async def load(self) -> None:
                self.items = {}

            async def get(self, request: my_pb2.Key) -> my_pb2.Item:
                async with self.lock:
                    return self.items[request.key]

            async def watch(self, request: my_pb2.Key):
                while True:
                    yield await self.next_change(request.key)

    Methods take ``(request)`` or ``(request, context)``; raise ``RpcException`` to fail a call with a
    ``ResultCode``.
    """

    is_async = True

    def __init__(self) -> None:
        super().__init__()
        #: Lock protecting the manager's state across awaits (bound to the server's loop on first use).
        self.lock = asyncio.Lock()

    async def load(self) -> None:
        """Awaited once every service of the server is serving; raise to make ``start()`` fail."""

    async def begin_shutdown(self) -> None:
        """Awaited when server shutdown starts (health is NOT_SERVING), before in-flight calls get their grace
        period: end long-lived streams here and refuse new work."""

    async def shutdown(self) -> None:
        """Awaited at server shutdown, once in-flight calls are finished (or the grace period is over)."""
