"""Fixtures running the core scenarios against each server/client stack.

``stack_server(manager=None, api_version=None, **kwargs)`` hosts the sample service and returns a server
exposing ``port``, ``manager``, ``shutdown(grace)`` and ``dump()``; ``stack_client(server, version=V3,
**kwargs)`` returns a client whose ``sample.<method>`` calls are synchronous whatever the stack.

Stacks: ``sync`` (``RpcServer``/``RpcClient``) and ``aio`` (``AsyncRpcServer`` hosting ``AsyncSampleManager``
and ``AsyncRpcClient``, on an event loop in a thread owned by the ``aio_loop`` fixture, driven through the
sync adapters of ``sample_async``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sample_async import AsyncSampleManager, LoopThread, SyncAioClient, SyncAioServer
from sample_service import V3, SampleManager, sample_descriptor, stubs

from grpc_helper import Access, AsyncRpcClient, AsyncRpcServer, RpcServer

STACKS = ["sync", "aio"]


@pytest.fixture(params=STACKS)
def stack(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def aio_loop() -> Iterator[LoopThread]:
    """An event loop in a thread, for the aio stack's servers and clients (closed after them)."""
    runner = LoopThread()
    yield runner
    runner.close()


@pytest.fixture
def stack_server(stack: str, request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    if stack == "sync":
        rpc_server_factory: Callable[..., RpcServer] = request.getfixturevalue("rpc_server_factory")

        def make(manager: SampleManager | None = None, api_version: Any = None, **kwargs: Any) -> Any:
            manager = manager or SampleManager()
            access = kwargs.pop("access", Access.ANYONE)
            server = rpc_server_factory([sample_descriptor(manager, api_version, access)], **kwargs)
            server.manager = manager  # type: ignore[attr-defined]
            return server

        yield make
        return

    runner: LoopThread = request.getfixturevalue("aio_loop")
    dump_folder: Path = request.getfixturevalue("rpc_dump_folder")
    servers: list[SyncAioServer] = []

    def make_aio(manager: SampleManager | None = None, api_version: Any = None, **kwargs: Any) -> Any:
        manager = manager or SampleManager()
        kwargs.setdefault("host", "127.0.0.1")
        kwargs.setdefault("dump_folder", dump_folder)
        access = kwargs.pop("access", Access.ANYONE)
        descriptor = sample_descriptor(AsyncSampleManager(manager), api_version, access)  # type: ignore[arg-type]
        server = SyncAioServer(runner, AsyncRpcServer(kwargs.pop("port", 0), [descriptor], **kwargs), manager)
        servers.append(server)
        return server

    yield make_aio
    for server in reversed(servers):
        server.shutdown()


@pytest.fixture
def stack_client(stack: str, request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    if stack == "sync":
        rpc_client_factory: Callable[..., Any] = request.getfixturevalue("rpc_client_factory")

        def make(server: Any = None, version: int = V3, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", 5)
            return rpc_client_factory(server, stubs(version), **kwargs)

        yield make
        return

    runner: LoopThread = request.getfixturevalue("aio_loop")
    clients: list[SyncAioClient] = []

    def make_aio(server: Any = None, version: int = V3, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", 5)
        kwargs.setdefault("name", "pytest")
        host = kwargs.pop("host", "127.0.0.1")
        port = kwargs.pop("port", None) or server.port
        client = SyncAioClient(runner, AsyncRpcClient(host, port, stubs(version), **kwargs))
        clients.append(client)
        return client

    yield make_aio
    for client in clients:
        client.close()
