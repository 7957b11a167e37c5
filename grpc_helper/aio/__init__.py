"""asyncio twins of the core classes, on ``grpc.aio``: ``AsyncRpcServer``, ``AsyncRpcClient``, ``AsyncRpcManager``.

They share their logic (descriptors, version checks, error mapping, retry policy, info, health, dumps) with
``RpcServer`` and ``RpcClient``; only the I/O differs. See doc/asyncio.md.
"""

from grpc_helper.aio.client import AsyncRpcClient
from grpc_helper.aio.manager import AsyncRpcManager
from grpc_helper.aio.server import AsyncRpcServer

__all__ = ["AsyncRpcClient", "AsyncRpcManager", "AsyncRpcServer"]
