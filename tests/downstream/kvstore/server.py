"""The service, sync and asyncio, written as the grpc-helper README shows."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import kvstore
from grpc_helper import AsyncRpcManager, ResultCode, RpcException, RpcManager, RpcServiceDescriptor
from kvstore.api.kv_pb2 import Item, Key, KvApiVersion, Outcome
from kvstore.api.kv_pb2_grpc import KvServiceServicer, KvServiceStub, add_KvServiceServicer_to_server


class KvManager(KvServiceServicer, RpcManager):
    def __init__(self) -> None:
        super().__init__()
        self.items: dict[str, str] = {}

    def get(self, request: Key, context: object = None) -> Item:
        if request.key not in self.items:
            raise RpcException(f"no such key: {request.key}", ResultCode.ERROR_ITEM_UNKNOWN)
        return Item(key=request.key, value=self.items[request.key])

    def put(self, request: Item, context: object = None) -> Outcome:
        with self.lock:
            self.items[request.key] = request.value
        return Outcome(rc=ResultCode.OK)

    def scan(self, request: Key, context: object = None) -> Iterator[Item]:
        for key in sorted(k for k in self.items if k.startswith(request.key)):
            yield Item(key=key, value=self.items[key])


class AsyncKvManager(KvServiceServicer, AsyncRpcManager):
    def __init__(self) -> None:
        super().__init__()
        self.items: dict[str, str] = {}

    async def get(self, request: Key, context: object = None) -> Item:
        if request.key not in self.items:
            raise RpcException(f"no such key: {request.key}", ResultCode.ERROR_ITEM_UNKNOWN)
        return Item(key=request.key, value=self.items[request.key])

    async def put(self, request: Item, context: object = None) -> Outcome:
        self.items[request.key] = request.value
        return Outcome(rc=ResultCode.OK)

    async def scan(self, request: Key, context: object = None) -> AsyncIterator[Item]:
        for key in sorted(k for k in self.items if k.startswith(request.key)):
            yield Item(key=key, value=self.items[key])


def descriptor() -> RpcServiceDescriptor:
    return RpcServiceDescriptor(kvstore, "kv", KvApiVersion, KvManager(), add_KvServiceServicer_to_server, KvServiceStub)


def async_descriptor() -> RpcServiceDescriptor:
    return RpcServiceDescriptor(kvstore, "kv", KvApiVersion, AsyncKvManager(), add_KvServiceServicer_to_server, KvServiceStub)
