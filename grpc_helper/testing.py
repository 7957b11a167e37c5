"""pytest plugin (auto-registered through the ``pytest11`` entry point): real servers and clients for tests.

Fixtures:

- ``rpc_server_factory(descriptors, **kwargs)``: an ``RpcServer`` on ``127.0.0.1:0``, shut down at teardown.
- ``rpc_client_factory(server, stubs=None, **kwargs)``: an ``RpcClient`` to that server (default stubs:
  every hosted service at its current API version), closed at teardown.
- ``rpc_dump_folder``: a per-test folder for the servers' debug dumps.
- ``async_rpc_server_factory`` / ``async_rpc_client_factory``: the same for ``AsyncRpcServer`` /
  ``AsyncRpcClient``, as async fixtures for pytest-asyncio (``await async_rpc_server_factory(descriptors)``
  returns a started server; clients are made synchronously and closed at teardown).

Example::

    def test_get(rpc_server_factory, rpc_client_factory):
        server = rpc_server_factory([my_descriptor()])
        client = rpc_client_factory(server, timeout=5)
        assert client.my.get(Request()).ok

    async def test_get_async(async_rpc_server_factory, async_rpc_client_factory):
        server = await async_rpc_server_factory([my_async_descriptor()])
        client = async_rpc_client_factory(server, timeout=5)
        assert (await client.my.get(Request())).ok
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from grpc_helper.aio import AsyncRpcClient, AsyncRpcServer
from grpc_helper.client import RpcClient
from grpc_helper.descriptor import RpcServiceDescriptor
from grpc_helper.server import RpcServer

__all__ = [
    "AsyncClientFactory",
    "AsyncServerFactory",
    "ClientFactory",
    "ServerFactory",
    "default_stubs",
    "rpc_client_factory",
    "rpc_dump_folder",
    "rpc_server_factory",
]  # + async_rpc_server_factory, async_rpc_client_factory when pytest-asyncio is installed

ServerFactory = Callable[..., RpcServer]
ClientFactory = Callable[..., RpcClient]


def default_stubs(descriptors: Sequence[RpcServiceDescriptor]) -> dict[str, tuple[type, int]]:
    """Stubs for every service of ``descriptors`` at their current API version."""
    return {d.name: (d.client_stub, d.current_api_version) for d in descriptors}


def _client_args(
    server: Any, stubs: Mapping[str, tuple[type, int]] | None, kwargs: dict[str, Any]
) -> tuple[str, int, Mapping[str, tuple[type, int]]]:
    """(host, port, stubs) for a test client of ``server``; pops ``host``/``port`` from ``kwargs``, names it."""
    host = kwargs.pop("host", "127.0.0.1")
    port = kwargs.pop("port", None) or server.port
    kwargs.setdefault("name", "pytest")
    return host, port, default_stubs(server.descriptors) if stubs is None else stubs


@pytest.fixture
def rpc_dump_folder(tmp_path: Path) -> Path:
    """Folder receiving the debug dumps of servers made by ``rpc_server_factory``."""
    folder = tmp_path / "dumps"
    folder.mkdir()
    return folder


@pytest.fixture
def rpc_server_factory(rpc_dump_folder: Path) -> Iterator[ServerFactory]:
    """Start ``RpcServer(0, descriptors, host="127.0.0.1", **kwargs)``; every server is shut down at teardown."""
    servers: list[RpcServer] = []

    def make(descriptors: Sequence[RpcServiceDescriptor], **kwargs: Any) -> RpcServer:
        kwargs.setdefault("host", "127.0.0.1")
        kwargs.setdefault("dump_folder", rpc_dump_folder)
        server = RpcServer(kwargs.pop("port", 0), descriptors, **kwargs)
        servers.append(server)
        return server

    yield make
    for server in reversed(servers):
        server.shutdown()


@pytest.fixture
def rpc_client_factory() -> Iterator[ClientFactory]:
    """Build ``RpcClient``\\ s to a server (or ``host``/``port`` kwargs); all are closed at teardown."""
    clients: list[RpcClient] = []

    def make(
        server: Any = None, stubs: Mapping[str, tuple[type, int]] | None = None, **kwargs: Any
    ) -> RpcClient:
        client = RpcClient(*_client_args(server, stubs, kwargs), **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


try:  # the async fixtures need pytest-asyncio; the plugin works without it
    import pytest_asyncio
except ImportError:  # pragma: no cover
    pytest_asyncio = None  # type: ignore[assignment]

AsyncServerFactory = Callable[..., Awaitable[AsyncRpcServer]]
AsyncClientFactory = Callable[..., AsyncRpcClient]

if pytest_asyncio is not None:

    @pytest_asyncio.fixture
    async def async_rpc_server_factory(rpc_dump_folder: Path) -> AsyncIterator[AsyncServerFactory]:
        """``await make(descriptors, **kwargs)``: a started ``AsyncRpcServer(0, descriptors, host="127.0.0.1",
        **kwargs)`` on the test's event loop; every server is shut down at teardown."""
        servers: list[AsyncRpcServer] = []

        async def make(descriptors: Sequence[RpcServiceDescriptor], **kwargs: Any) -> AsyncRpcServer:
            kwargs.setdefault("host", "127.0.0.1")
            kwargs.setdefault("dump_folder", rpc_dump_folder)
            server = AsyncRpcServer(kwargs.pop("port", 0), descriptors, **kwargs)
            await server.start()
            servers.append(server)
            return server

        yield make
        for server in reversed(servers):
            await server.shutdown()

    @pytest_asyncio.fixture
    async def async_rpc_client_factory() -> AsyncIterator[AsyncClientFactory]:
        """``make(server, stubs=None, **kwargs)``: an ``AsyncRpcClient`` to a server (or ``host``/``port``
        kwargs; default stubs: every hosted service at its current API version); all closed at teardown."""
        clients: list[AsyncRpcClient] = []

        def make(server: Any = None, stubs: Mapping[str, tuple[type, int]] | None = None, **kwargs: Any) -> AsyncRpcClient:
            client = AsyncRpcClient(*_client_args(server, stubs, kwargs), **kwargs)
            clients.append(client)
            return client

        yield make
        for client in clients:
            await client.close()
