"""What only the asyncio stack has: event-loop fixtures, cancellation, concurrency on one channel, channels
across ``asyncio.run`` calls, awaited manager hooks, USR2 dumps from a loop in the main thread.

The scenarios shared with the sync stack run on both stacks in test_core_*.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import grpc
import probe_pb2  # type: ignore[import-not-found]
import probe_pb2_grpc  # type: ignore[import-not-found]
import pytest
from sample_async import AsyncSampleManager
from sample_service import Request, SampleManager, sample_descriptor, stubs

import grpc_helper
from grpc_helper import (
    AsyncRpcClient,
    AsyncRpcManager,
    AsyncRpcServer,
    ResultCode,
    RpcException,
    RpcManager,
    RpcServer,
    RpcServiceDescriptor,
    certs,
)
from grpc_helper.api.info_pb2 import InfoFilter


class CancelWatcher(AsyncSampleManager):
    """Records that the server cancelled a call's coroutine."""

    def __init__(self) -> None:
        super().__init__()
        self.cancelled = asyncio.Event()

    async def echo(self, request: Any) -> Any:
        try:
            return await super().echo(request)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def count(self, request: Any, context: Any) -> AsyncIterator[Any]:
        try:
            async for reply in super().count(request, context):
                yield reply
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


def pending_calls(server: AsyncRpcServer) -> str:
    """The ``<address>: <n> pending`` line of a fresh dump (dumps of the same second share a file: the last one)."""
    return [line for line in server.dump().read_text().splitlines() if line.endswith("pending")][-1]


async def test_async_fixtures_and_every_shape(async_rpc_server_factory: Any, async_rpc_client_factory: Any) -> None:
    server = await async_rpc_server_factory([sample_descriptor(AsyncSampleManager())])  # type: ignore[arg-type]
    client = async_rpc_client_factory(server, timeout=5)
    assert (await client.sample.echo(Request(text="hi"))).text == "hi"
    assert [r.index async for r in client.sample.count(Request(count=3))] == [0, 1, 2]

    async def requests() -> AsyncIterator[Any]:
        for text in "abc":
            yield Request(text=text)

    assert (await client.sample.concat(requests())).text == "abc"  # async iterable
    assert (await client.sample.concat([Request(text="d"), Request(text="e")])).text == "de"  # plain iterable
    assert [r.text async for r in client.sample.mirror(requests())] == ["a", "b", "c"]
    with pytest.raises(RpcException) as caught:
        await client.sample.echo(Request(rc=ResultCode.ERROR_ITEM_UNKNOWN))
    assert caught.value.status == grpc.StatusCode.NOT_FOUND


async def test_cancelling_an_inflight_call_cancels_the_server_coroutine(
    async_rpc_server_factory: Any, async_rpc_client_factory: Any
) -> None:
    manager = CancelWatcher()
    server = await async_rpc_server_factory([sample_descriptor(manager)])  # type: ignore[arg-type]
    client = async_rpc_client_factory(server, timeout=5)
    call = asyncio.create_task(client.sample.echo(Request(text="slow", delay=30)))
    assert await manager.state.entered.wait_async(5)
    assert pending_calls(server).endswith(": 1 pending")
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await asyncio.wait_for(manager.cancelled.wait(), 5)
    assert pending_calls(server).endswith(": 0 pending")
    assert (await client.sample.echo(Request(text="after"))).text == "after"


async def test_leaving_a_stream_early_cancels_it_on_the_server(
    async_rpc_server_factory: Any, async_rpc_client_factory: Any
) -> None:
    manager = CancelWatcher()
    server = await async_rpc_server_factory([sample_descriptor(manager)])  # type: ignore[arg-type]
    client = async_rpc_client_factory(server, timeout=5)
    async with aclosing(client.sample.count(Request(count=3, delay=30))) as stream:
        async for reply in stream:
            assert reply.index == 0
            break
    await asyncio.wait_for(manager.cancelled.wait(), 5)


async def test_many_concurrent_calls_on_one_channel(async_rpc_server_factory: Any, async_rpc_client_factory: Any) -> None:
    server = await async_rpc_server_factory([sample_descriptor(AsyncSampleManager())])  # type: ignore[arg-type]
    client = async_rpc_client_factory(server, timeout=5)

    async def streamed(i: int) -> list[int]:
        return [r.index async for r in client.sample.count(Request(text=str(i), count=3))]

    replies = await asyncio.gather(*(client.sample.echo(Request(text=str(i))) for i in range(300)))
    assert [r.text for r in replies] == [str(i) for i in range(300)]
    assert await asyncio.gather(*(streamed(i) for i in range(50))) == [[0, 1, 2]] * 50
    assert len(client._channels) == 1


def test_one_client_across_separate_asyncio_runs(rpc_server_factory: Any) -> None:
    server = rpc_server_factory([sample_descriptor()])
    client = AsyncRpcClient("127.0.0.1", server.port, stubs(), timeout=5)  # made outside any loop
    for text in ("first loop", "second loop", "third loop"):
        assert asyncio.run(client.sample.echo(Request(text=text))).text == text
    asyncio.run(client.close())
    with pytest.raises(RpcException, match="closed"):
        asyncio.run(client.sample.echo(Request()))


class Recorder(probe_pb2_grpc.AsyncProbeServicer, AsyncRpcManager):
    """An async manager that records its hooks."""

    def __init__(self, log: list[str], fail: bool = False) -> None:
        super().__init__()
        self.log = log
        self.fail = fail

    async def load(self) -> None:
        info = await self.client.info.get(InfoFilter(names=["recorder"]))
        self.log.append(f"load {info.items[0].name}")
        if self.fail:
            raise RuntimeError("recorder load failure")

    async def shutdown(self) -> None:
        self.log.append("shutdown")

    async def ping(self, request: Any) -> Any:
        return probe_pb2.Ping(text=f"async {request.text}")


class SyncRecorder(probe_pb2_grpc.SyncProbeServicer, RpcManager):
    """A plain sync manager on an asyncio server: hooks and methods run on the event loop."""

    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    def load(self) -> None:
        self.log.append(f"sync load ({type(self.client).__name__}, logger {self.logger.name})")

    def shutdown(self) -> None:
        self.log.append("sync shutdown")

    def ping(self, request: Any, context: Any) -> Any:
        return probe_pb2.Ping(text=f"sync {request.text}")


def probes(log: list[str], fail: bool = False) -> list[RpcServiceDescriptor]:
    return [
        RpcServiceDescriptor(
            grpc_helper, "recorder", probe_pb2.ProbeApiVersion, Recorder(log, fail),
            probe_pb2_grpc.add_AsyncProbeServicer_to_server, probe_pb2_grpc.AsyncProbeStub,
        ),
        RpcServiceDescriptor(
            grpc_helper, "legacy", probe_pb2.ProbeApiVersion, SyncRecorder(log),
            probe_pb2_grpc.add_SyncProbeServicer_to_server, probe_pb2_grpc.SyncProbeStub,
        ),
    ]


async def test_manager_hooks_are_awaited_in_order(async_rpc_server_factory: Any) -> None:
    log: list[str] = []
    server = await async_rpc_server_factory([sample_descriptor(AsyncSampleManager()), *probes(log)])  # type: ignore[arg-type]
    # A sync manager on the asyncio server gets a sync client (for its own threads) and a logger named after
    # its service, like on RpcServer.
    assert log == ["load recorder", "sync load (RpcClient, logger grpc_helper.legacy)"]
    assert (await server.auto_client.recorder.ping(probe_pb2.Ping(text="a"))).text == "async a"
    assert (await server.auto_client.legacy.ping(probe_pb2.Ping(text="b"))).text == "sync b"
    await server.shutdown(1)
    assert log[2:] == ["sync shutdown", "shutdown"]
    await server.shutdown()  # idempotent
    assert await server.wait_for_termination(0)
    assert log.count("shutdown") == 1


async def test_load_failure_shuts_down_the_managers_loaded_before(async_rpc_server_factory: Any, rpc_dump_folder: Path) -> None:
    log: list[str] = []
    first = await async_rpc_server_factory([sample_descriptor(AsyncSampleManager())])  # type: ignore[arg-type]
    port = first.port
    await first.shutdown()
    loaded = AsyncSampleManager()
    failing = AsyncRpcServer(
        port, [sample_descriptor(loaded), *probes(log, fail=True)],  # type: ignore[arg-type]
        host="127.0.0.1", dump_folder=rpc_dump_folder,
    )
    with pytest.raises(RuntimeError, match="recorder load failure"):
        await failing.start()
    assert log == ["load recorder"]  # the failed manager is not shut down, the ones loaded before it are
    assert loaded.state.stopped.is_set()
    assert await failing.wait_for_termination(0)
    again = await async_rpc_server_factory([sample_descriptor(AsyncSampleManager())], port=port)  # type: ignore[arg-type]
    assert again.port == port


async def test_usr2_dump_from_a_loop_in_the_main_thread(
    async_rpc_server_factory: Any, async_rpc_client_factory: Any, rpc_dump_folder: Path
) -> None:
    manager = AsyncSampleManager()
    server = await async_rpc_server_factory([sample_descriptor(manager)])  # type: ignore[arg-type]
    client = async_rpc_client_factory(server, timeout=5, name="aio-dump-client")
    call = asyncio.create_task(client.sample.echo(Request(text="pending", delay=30)))
    assert await manager.state.entered.wait_async(5)
    os.kill(os.getpid(), signal.SIGUSR2)  # the handler runs in this (main) thread before kill() returns
    manager.state.release.set()
    assert (await call).text == "pending"
    (dump,) = rpc_dump_folder.glob("RpcServerDump-*.txt")
    text = dump.read_text()
    assert "/tests.sample.SampleService/echo client=aio-dump-client" in text
    assert "test_usr2_dump_from_a_loop_in_the_main_thread" in text


def test_sync_sample_manager_keeps_state_for_its_async_twin() -> None:
    state = SampleManager(fail_load=True)
    assert AsyncSampleManager(state).state is state


async def test_shutdown_from_a_call_answers_then_stops(async_rpc_server_factory: Any, async_rpc_client_factory: Any) -> None:
    class Stopper(AsyncSampleManager):
        async def echo(self, request: Any) -> Any:
            stopping.append(asyncio.create_task(holder[0].shutdown(5)))
            return await super().echo(request)

    holder: list[AsyncRpcServer] = []
    stopping: list[asyncio.Task[None]] = []
    stopper = Stopper()
    holder.append(await async_rpc_server_factory([sample_descriptor(stopper)]))  # type: ignore[arg-type]
    client = async_rpc_client_factory(holder[0], timeout=1)
    assert (await client.sample.echo(Request(text="bye"))).text == "bye"
    assert await holder[0].wait_for_termination(10)
    assert stopper.state.stopped.is_set()


async def test_cancelled_shutdown_still_completes(async_rpc_server_factory: Any, async_rpc_client_factory: Any) -> None:
    manager = AsyncSampleManager()
    server = await async_rpc_server_factory([sample_descriptor(manager)])  # type: ignore[arg-type]
    client = async_rpc_client_factory(server, timeout=1)
    call = asyncio.create_task(client.sample.echo(Request(text="slow", delay=30)))
    assert await manager.state.entered.wait_async(5)
    stopping = asyncio.create_task(server.shutdown(30))
    await asyncio.sleep(0)  # one loop turn: the shutdown task takes its first step (FIFO scheduling)
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    manager.state.release.set()
    assert (await call).text == "slow"
    assert await server.wait_for_termination(10)
    assert manager.state.stopped.is_set()


async def test_mutual_tls(async_rpc_server_factory: Any, async_rpc_client_factory: Any, tmp_path: Path) -> None:
    tls = certs.init(tmp_path / "tls", clients=["root", "alice"])
    log: list[str] = []
    server = await async_rpc_server_factory(
        probes(log), credentials=certs.server_credentials(tls), client_credentials=certs.channel_credentials(tls, "root")
    )
    assert log[0] == "load recorder"  # the auto-client speaks TLS in load()
    client = async_rpc_client_factory(server, credentials=certs.channel_credentials(tls, "alice"), timeout=5)
    assert (await client.recorder.ping(probe_pb2.Ping(text="x"))).text == "async x"
    plaintext = async_rpc_client_factory(server, timeout=0.5)
    with pytest.raises(RpcException) as caught:
        await plaintext.recorder.ping(probe_pb2.Ping(text="x"))
    assert caught.value.rc == ResultCode.ERROR_RPC


def test_async_manager_on_sync_server_is_refused_clearly() -> None:
    with pytest.raises(TypeError, match="needs AsyncRpcServer"):
        RpcServer(0, probes([])[:1], host="127.0.0.1")


SERVE_FOREVER = """
import asyncio, sys
from grpc_helper import AsyncRpcServer

async def main():
    server = AsyncRpcServer(0, [], host="127.0.0.1")
    await server.start()
    print(server.port, flush=True)
    await server.serve_forever(grace=1)
    print("stopped", flush=True)

asyncio.run(main())
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_serve_forever_stops_on_signal(signum: int) -> None:
    process = subprocess.Popen([sys.executable, "-c", SERVE_FOREVER], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=10)
        process.send_signal(signum)
        out, _ = process.communicate(timeout=30)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0
    assert out.strip() == "stopped"
