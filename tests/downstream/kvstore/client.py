"""Typed client helpers: ``client.stub(KvServiceStub)`` is typed as the generated stub (sync) or as its
asyncio twin ``KvServiceAsyncStub`` (``AsyncRpcClient``), so mypy --strict checks requests and replies."""

from __future__ import annotations

from grpc_helper import AsyncRpcClient, RpcClient
from kvstore.api.kv_pb2 import Item, Key, KvApiVersion
from kvstore.api.kv_pb2_grpc import KvServiceStub

STUBS = {"kv": (KvServiceStub, KvApiVersion.KV_API_CURRENT)}


def connect(host: str, port: int) -> RpcClient:
    return RpcClient(host, port, STUBS, timeout=5, name="kvstore-client")


def put(client: RpcClient, key: str, value: str) -> None:
    client.stub(KvServiceStub).put(Item(key=key, value=value), timeout=5)


def get(client: RpcClient, key: str) -> str:
    item: Item = client.stub(KvServiceStub).get(Key(key=key), timeout=5)
    return item.value


def scan(client: RpcClient, prefix: str) -> list[tuple[str, str]]:
    return [(item.key, item.value) for item in client.stub(KvServiceStub).scan(Key(key=prefix), timeout=5)]


def get_by_attribute(client: RpcClient, key: str) -> str:
    # The seed's attribute access still works (typed as Any).
    value: str = client.kv.get(Key(key=key)).value
    return value


async def aput(client: AsyncRpcClient, key: str, value: str) -> None:
    await client.stub(KvServiceStub).put(Item(key=key, value=value), timeout=5)


async def aget(client: AsyncRpcClient, key: str) -> str:
    item = await client.stub(KvServiceStub).get(Key(key=key), timeout=5)
    return item.value


async def ascan(client: AsyncRpcClient, prefix: str) -> list[tuple[str, str]]:
    return [(item.key, item.value) async for item in client.stub(KvServiceStub).scan(Key(key=prefix))]


async def aget_by_attribute(client: AsyncRpcClient, key: str) -> str:
    value: str = (await client.kv.get(Key(key=key))).value
    return value
