"""kvstore's own tests, on the grpc-helper pytest plugin's fixtures (sync and asyncio)."""

from __future__ import annotations

import pytest

from grpc_helper import ResultCode, RpcException
from grpc_helper.testing import AsyncClientFactory, AsyncServerFactory, ClientFactory, ServerFactory
from kvstore.client import STUBS, aget, aget_by_attribute, aput, ascan, get, get_by_attribute, put, scan
from kvstore.server import async_descriptor, descriptor


def test_sync(rpc_server_factory: ServerFactory, rpc_client_factory: ClientFactory) -> None:
    server = rpc_server_factory([descriptor()])
    client = rpc_client_factory(server, STUBS, timeout=5)
    put(client, "a1", "x")
    put(client, "a2", "y")
    assert get(client, "a1") == "x" and get_by_attribute(client, "a2") == "y"
    assert scan(client, "a") == [("a1", "x"), ("a2", "y")]
    with pytest.raises(RpcException) as caught:
        get(client, "nope")
    assert caught.value.rc == ResultCode.ERROR_ITEM_UNKNOWN


async def test_async(async_rpc_server_factory: AsyncServerFactory, async_rpc_client_factory: AsyncClientFactory) -> None:
    server = await async_rpc_server_factory([async_descriptor()])
    client = async_rpc_client_factory(server, STUBS, timeout=5)
    await aput(client, "b1", "z")
    assert await aget(client, "b1") == "z" and await aget_by_attribute(client, "b1") == "z"
    assert await ascan(client, "b") == [("b1", "z")]
    with pytest.raises(RpcException) as caught:
        await aget(client, "nope")
    assert caught.value.rc == ResultCode.ERROR_ITEM_UNKNOWN
