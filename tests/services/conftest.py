"""Both stacks hosting the built-in services over mTLS, with synchronous handles for the test bodies.

``svc`` (parametrized sync/aio) gives:

- ``svc.server(descriptors=(), services=None, **kwargs)``: a started server (``RpcServer``, or an
  ``AsyncRpcServer`` on a loop thread) with mTLS; ``root`` is an administrator, ``alice`` is not.
- ``svc.client(port, who="root")``: a client of the built-in services with a synchronous API.
- ``svc.listen(client, names, stream="", after=0)``: an ``EventListener`` (or ``AsyncEventListener`` driven
  from the loop thread) as a synchronous iterator of events and keepalives (None).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from sample_async import LoopThread, SyncAioClient, SyncAioServer, _next
from sample_service import SampleManager

from grpc_helper import AsyncRpcClient, AsyncRpcServer, BuiltinServices, RpcClient, RpcServer, certs
from grpc_helper.events import AsyncEventListener, EventListener

ADMIN, USER = "root", "alice"
SELF = "auto-client"


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return certs.init(tmp_path_factory.mktemp("tls"), clients=[USER, SELF], admins=[ADMIN])


class Env:
    def __init__(self, stack: str, tls: Path, dumps: Path, runner: LoopThread | None) -> None:
        self.stack = stack
        self.tls = tls
        self.dumps = dumps
        self.runner = runner
        self._servers: list[Any] = []
        self._clients: list[Any] = []
        self._listeners: list[Any] = []

    def server(self, descriptors: Any = (), **kwargs: Any) -> Any:
        kwargs.setdefault("host", "127.0.0.1")
        kwargs.setdefault("dump_folder", self.dumps)
        if kwargs.pop("tls", True):
            kwargs.setdefault("credentials", certs.server_credentials(self.tls))
            kwargs.setdefault("client_credentials", certs.channel_credentials(self.tls, SELF))
            kwargs.setdefault("admins", [ADMIN])
        port = kwargs.pop("port", 0)
        if self.runner is None:
            server: Any = RpcServer(port, list(descriptors), **kwargs)
        else:
            server = SyncAioServer(self.runner, AsyncRpcServer(port, list(descriptors), **kwargs), SampleManager())
        self._servers.append(server)
        return server

    def credentials(self, who: str | None) -> grpc.ChannelCredentials | None:
        return None if who is None else certs.channel_credentials(self.tls, who)

    def client(self, port: int, who: str | None = ADMIN, timeout: float = 10, **kwargs: Any) -> Any:
        args = ("127.0.0.1", port, BuiltinServices.STUBS)
        kwargs.update(timeout=timeout, name="pytest", credentials=self.credentials(who))
        if self.runner is None:
            client: Any = RpcClient(*args, **kwargs)
        else:
            client = SyncAioClient(self.runner, AsyncRpcClient(*args, **kwargs))
        self._clients.append(client)
        return client

    def listen(self, client: Any, names: Any = (), stream: str = "", after: int = 0) -> Iterator[Any]:
        items = self._listen(client, names, stream, after)
        self._listeners.append(items)
        return items

    def _listen(self, client: Any, names: Any, stream: str, after: int) -> Iterator[Any]:
        if self.runner is None:
            yield from EventListener(client, names, stream=stream, after=after).items()
            return
        runner = self.runner
        items = AsyncEventListener(client.aio, names, stream=stream, after=after).items()
        try:
            while True:
                more, item = runner.run(_next(items))
                if not more:
                    return
                yield item
        finally:
            runner.run(items.aclose())

    def close(self) -> None:
        for listener in self._listeners:
            listener.close()
        for client in self._clients:
            client.close()
        for server in reversed(self._servers):
            server.shutdown()


@pytest.fixture(params=["sync", "aio"])
def svc(request: pytest.FixtureRequest, tls: Path, tmp_path: Path) -> Iterator[Env]:
    runner = LoopThread() if request.param == "aio" else None
    env = Env(request.param, tls, tmp_path, runner)
    yield env
    env.close()
    if runner is not None:
        runner.close()
