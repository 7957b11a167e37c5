"""AsyncGridClient (grpc.aio)."""

from __future__ import annotations

import asyncio

import pytest

from grpc_helper import ResultCode, RpcException
from grpc_helper.grid import AsyncGridClient, JobError

from .conftest import WAIT, GridServer


async def test_async_client(grid_server: GridServer, spawn_worker) -> None:
    spawn_worker("grid_handlers:upper", "up", "1", "--concurrency", "2")
    spawn_worker("grid_handlers:fail", "bad", "1")
    async with AsyncGridClient(grid_server.endpoint, credentials=grid_server.credentials(), timeout=WAIT) as client:
        assert await client.map("up", "1", [b"a", b"b", b"c"], timeout=WAIT) == [b"A", b"B", b"C"]
        handle = await client.submit("up", 1, b"one")
        assert await handle.result(WAIT) == b"ONE"
        assert await handle == b"ONE"
        handles = await client.submit_batch("up", "1", [b"x%d" % i for i in range(20)])
        seen = [h.job_id async for h in client.as_completed(handles, timeout=WAIT)]
        assert sorted(seen) == sorted(h.job_id for h in handles)
        bad = await client.submit("bad", "1", b"boom")
        with pytest.raises(JobError) as info:
            await bad.result(WAIT)
        assert info.value.rc == ResultCode.ERROR_CUSTOM
        waiting = await client.submit("nobody", "1", b"zzz")
        assert await waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting.result(WAIT)
        result = await client.get_result(handle.job_id)
        assert result.data == b"ONE"
        with pytest.raises(RpcException) as unknown:
            await client.get_result(10**9)
        assert unknown.value.rc == ResultCode.ERROR_ITEM_UNKNOWN


async def test_async_client_calls_have_deadlines() -> None:
    """No server: calls fail within the client's timeout instead of waiting for it forever."""
    async with AsyncGridClient("127.0.0.1:1", timeout=0.5) as client:
        with pytest.raises(RpcException) as info:
            await asyncio.wait_for(client.submit("echo", "1", b"x"), WAIT)
    assert info.value.rc in (ResultCode.ERROR_RPC, ResultCode.ERROR_DEADLINE)
